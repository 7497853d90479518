"""`llm2clip-nemo data build | demo | inspect`."""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from ..config.cli_args import verb_parser
from .samples import check_sample, decode_json
from .spec import DataSourceError, parse_sources


def _parser() -> argparse.ArgumentParser:
    p = verb_parser("data", description="Build, inspect and demo image-text shards.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write LAION-layout shards from an image folder + captions, or img2dataset output")
    b.add_argument("--out", required=True, help="output directory (a partial build there is resumed)")
    b.add_argument("--images", help="image folder; paths in --captions are relative to it")
    b.add_argument("--captions", help=".jsonl (one object per line) or .csv/.tsv with columns image, caption, more fields")
    b.add_argument("--img2dataset", help="img2dataset output directory (files layout or tars) to re-shard")
    b.add_argument("--samples-per-shard", type=int, default=1000)
    b.add_argument("--prefix", default="shard")
    b.add_argument("--caption-fields", default="txt",
                   help="comma list: samples with no text in any of these fields are skipped (missing_caption); "
                        "txt = the alt text, other names = json fields (e.g. txt,long)")
    d = sub.add_parser("demo", help="build the Twemoji demo dataset (train/test shards)")
    d.add_argument("--out", required=True)
    d.add_argument("--test-fraction", type=float, default=0.2)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--samples-per-shard", type=int, default=500)
    d.add_argument("--no-install", action="store_true", help="never apt-get the Debian Unicode packages")
    i = sub.add_parser("inspect", help="count samples, members, json fields and problems in shards")
    i.add_argument("urls", help="shard spec: brace pattern, directory or manifest.json; '::' joins sources")
    i.add_argument("--decode", action="store_true", help="also decode every image (finds corrupt ones)")
    i.add_argument("--json", action="store_true", help="print the totals as JSON")
    i.add_argument("--caption-fields", default="txt", help="comma list of the fields a caption may come from "
                                                           "(as data.caption_fields): txt, json keys such as long")
    return p


def _fields(spec: str) -> list[str]:
    fields = [f.strip() for f in spec.split(",") if f.strip()]
    if not fields:
        raise DataSourceError(f"--caption-fields {spec!r} names no field; use e.g. txt or txt,long")
    return fields


def inspect_shards(urls: str, decode: bool = False, caption_fields: list[str] | None = None) -> dict:
    """Per-shard and total counts: samples, valid samples, member extensions, json fields, problems by reason.

    Every sample goes through `data.samples.check_sample`, the checker the stream, extract and
    evaluate use, so the problem counts are theirs (image reasons only with decode=True).
    caption_fields: where a caption may come from (default ["txt"], the stream's default)."""
    fields = caption_fields or ["txt"]
    total = {"samples": 0, "valid": 0, "members": Counter(), "json_fields": Counter(), "problems": Counter(),
             "shards": {}}
    for src in parse_sources(urls, named=lambda _: "urls"):  # the `data inspect URLS` argument
        for u in src.urls:
            n, valid, probs = 0, 0, Counter()
            for raw in src.read(u):
                c = check_sample(raw, fields, decode=decode)
                probs.update(c.reasons)
                if raw.error:
                    continue
                n += 1
                total["members"].update(list(raw.members))
                meta, _ = decode_json(raw.members.get("json"))
                total["json_fields"].update(list(meta or {}))
                valid += c.sample is not None
            total["shards"][u] = {"samples": n, "valid": valid, "problems": dict(sorted(probs.items()))}
            total["samples"] += n
            total["valid"] += valid
            total["problems"].update(probs)
    return {k: dict(sorted(v.items())) if isinstance(v, Counter) else v for k, v in total.items()}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "build":
            return _build(args)
        if args.cmd == "demo":
            from .demo_dataset import build_demo_dataset

            r = build_demo_dataset(args.out, test_fraction=args.test_fraction, seed=args.seed,
                                   samples_per_shard=args.samples_per_shard, install=not args.no_install)
            print(f"demo dataset: {r.n_train} train / {r.n_test} test images ({r.n_concepts_train} / "
                  f"{r.n_concepts_test} base concepts)\n  train: {r.train_urls}\n  test:  {r.test_urls}")
            for w in r.warnings:
                print(f"  warning: {w}")
            print(f"  credits: {r.credits}")
            return 0
        t = inspect_shards(args.urls, decode=args.decode, caption_fields=_fields(args.caption_fields))
        if args.json:
            print(json.dumps(t, indent=1, ensure_ascii=False))
            return 0
        for u, s in t["shards"].items():
            print(f"{s['samples']:>8}  {u}" + (f"  problems: {s['problems']}" if s["problems"] else ""))
        print(f"{t['samples']:>8}  samples in {len(t['shards'])} shards, {t['valid']} valid")
        print(f"members: {t['members']}\njson fields: {t['json_fields']}\nproblems: {t['problems'] or 'none'}")
        return 0
    except DataSourceError as e:
        print(f"llm2clip-nemo data {args.cmd}: {e}", file=sys.stderr)
        return 2


def _build(args) -> int:
    from .shards import samples_from_folder, samples_from_img2dataset, write_shards

    skipped: dict = {}
    fields = _fields(args.caption_fields)
    if args.img2dataset:
        samples = samples_from_img2dataset(args.img2dataset, skipped, fields)
    elif args.images and args.captions:
        samples = samples_from_folder(args.images, args.captions, skipped, fields)
    else:
        raise DataSourceError("give --images DIR --captions FILE, or --img2dataset DIR")
    man = write_shards(samples, args.out, prefix=args.prefix, samples_per_shard=args.samples_per_shard)
    print(f"wrote {man['total']} samples in {len(man['shards'])} shards to {args.out} "
          f"({man['resumed_shards']} already there, kept); fields: {', '.join(man['fields'])}"
          + (f"; skipped: {dict(sorted(skipped.items()))}" if skipped else "")
          + (f"; {len(man['key_map'])} keys holding '.' or '%' written escaped (manifest.json key_map)"
             if man.get("key_map") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

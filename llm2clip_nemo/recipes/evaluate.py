"""`llm2clip-nemo evaluate --model PATH --data SPEC`: retrieval, long-caption retrieval, CRA and
zero-shot classification of an LLM2CLIP model, written as report.json, report.md and PNG plots.

    llm2clip-nemo evaluate --model runs/pretrain_tiny --data 'demo/test/shard-{000000..000001}.tar' \
        --caption-field txt,short_list --labels-field group --out eval/

Model: any layout `models.loading.load_llm2clip` accepts (run dir, .nemo, .ckpt, HF export), or a
stock Hugging Face `CLIPModel` directory (its own text tower, as a baseline). Data: webdataset shards
or a JSON manifest (`eval.data`). The public benchmarks from their published files: `--benchmark
NAME --root DIR` (`recipes.benchmark`). The command line over the `eval` library: `eval.evaluate`
(the tasks and their protocols), `eval.write_comparison_report` (several models in one report).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..config.cli_args import VerbParser, verb_parser
from ..data.errors import DataSourceError
from ..eval.data import EvalDataError, load_eval_data
from ..eval.encoders import load_any_model
from ..eval.tasks import TASKS


def build_parser() -> VerbParser:
    p = verb_parser("evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="run dir, .nemo, .ckpt, or an export-hf directory")
    p.add_argument("--data", default=None, help="shards (brace pattern, dir, manifest.json) or an eval JSON manifest")
    p.add_argument("--benchmark", default=None, help="instead of --data: a public benchmark read from its published "
                                                     "files under --root (flickr30k, coco, sharegpt4v, urban1k, docci, "
                                                     "xm3600, sugarcrepe, imagenet, cra; a comma list; or all)")
    p.add_argument("--root", default=None, help="--benchmark: folder holding the benchmark folders (README layout)")
    p.add_argument("--baseline", default=None, help="--benchmark: a second model (e.g. a stock HF CLIPModel "
                                                    "directory) scored into the same table")
    p.add_argument("--tasks", default="auto", help=f"comma list of {','.join(TASKS)}, or auto (what the data has)")
    p.add_argument("--caption-field", default="txt", help="retrieval caption field(s), comma list: txt, or json keys "
                                                          "such as long, short_list")
    p.add_argument("--long-field", default="long", help="json field of the long caption ('' = none)")
    p.add_argument("--labels-field", "--classnames-field", dest="labels_field", default=None,
                   help="json field holding each sample's class name (zero-shot); manifests use 'label'")
    p.add_argument("--templates", default="single",
                   help="zero-shot prompts: a set (single, short, imagenet) or one prompt with {} for the class name")
    p.add_argument("--out", default="eval_report", help="output directory for report.json/.md and plots")
    p.add_argument("--strict", action="store_true", help="stop at the first bad sample (naming shard and key, or "
                                                         "manifest entry) instead of skipping and counting it")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--image-root", default=None, help="manifest: folder the image paths are relative to")
    p.add_argument("--split", default=None, help="manifest: keep this split (e.g. test)")
    p.add_argument("--teacher-path", default=None, help="teacher LLM location, if moved since training")
    p.add_argument("--tensor-parallel", type=int, default=1, help="teacher TP size to run with")
    p.add_argument("--name", default=None, help="model name in the report")
    p.add_argument("--no-plots", action="store_true")
    return p


def main(argv: list[str]) -> int:
    from ..config import ConfigError
    from ..eval.manifest import ManifestError
    from ..eval.report import markdown_table
    from ..eval.results import report_sections
    from ..eval.tasks import evaluate
    from ..models.loading import UnknownLayoutError
    from ..runtime import init_parallel

    args = build_parser().parse_args(argv)
    if args.benchmark:
        from .benchmark import main_benchmark

        return main_benchmark(args)
    if not args.data:
        print("llm2clip-nemo evaluate: error: give --data SPEC (shards or a manifest), or --benchmark NAME --root DIR.",
              file=sys.stderr)
        return 2
    try:
        data = load_eval_data(args.data, [f.strip() for f in args.caption_field.split(",") if f.strip()],
                              args.long_field or None, args.labels_field, args.strict, args.max_samples,
                              args.image_root, args.split)
        groups = init_parallel(args.tensor_parallel, field="--tensor-parallel")
        model = load_any_model(args.model, tensor_parallel=args.tensor_parallel, teacher_path=args.teacher_path,
                               groups=groups)
        res = evaluate(model, data, args.tasks, args.out, name=args.name or Path(args.model).name,
                       batch_size=args.batch_size, templates=args.templates, plots=not args.no_plots, groups=groups)
    except (EvalDataError, ManifestError, UnknownLayoutError, ConfigError, DataSourceError, ValueError,
            FileNotFoundError) as e:
        print(f"llm2clip-nemo evaluate: error: {e}", file=sys.stderr)
        return 2
    if groups.rank == 0:
        print(data.summary())
        for section, rows in report_sections({res["name"]: res}).items():
            print(f"\n{section}\n{markdown_table(rows)}")
        print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0

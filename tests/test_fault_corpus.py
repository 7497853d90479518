"""One fault corpus through build -> inspect -> stream -> extract -> evaluate: the same counts by
reason at every stage, no traceback, and one line with exit code 2 where the product refuses."""
from __future__ import annotations

import json
import tarfile

import pytest
from fault_images import bomb_png, cmyk_jpeg, exif_jpeg, palette_alpha_png, ramp16_png, truncated_jpeg, two_tone
from llm_fixtures import write_tiny_llama
from synthetic_shards import jpeg, tiny_stream_config

from llm2clip_nemo.data.cli import inspect_shards
from llm2clip_nemo.data.cli import main as data_main
from llm2clip_nemo.data.stream import ImageTextStream
from llm2clip_nemo.data.tario import add_member, iter_tar_samples

FIELDS = ["txt", "long"]


def corpus() -> dict[str, dict[str, bytes]]:
    """key -> members. Valid: good0, good1, cmyk, png16, palpha, exif6, listjson (bad json dropped), photo.v1."""
    def s(image: bytes, ext="jpg", txt: bytes | None = b"w1 w2", meta=None):
        m = {ext: image}
        if txt is not None:
            m["txt"] = txt
        if meta is not None:
            m["json"] = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
        return m

    return {
        "good0": s(jpeg(0), meta={"long": "w3 w4 w5"}),
        "good1": s(jpeg(1), txt=None, meta={"long": "w6 w7"}),
        "cmyk": s(cmyk_jpeg((0, 255, 255, 0))),
        "png16": s(ramp16_png(64, 16), "png"),
        "palpha": s(palette_alpha_png(), "png"),
        "exif6": s(exif_jpeg(two_tone(40, 24), 6)),
        "listjson": s(jpeg(2), meta=b'["w8", "w9"]'),
        "photo.v1": s(jpeg(3), txt=b"w10 w11"),
        "zero": s(b""),
        "trunc": s(truncated_jpeg()),
        "bomb": s(bomb_png(), "png"),
        "garbage": s(b"not an image at all"),
        "nonutf": s(jpeg(4), txt=b"\xff\xfe\xfa w1"),
        "nullcap": s(jpeg(5), txt=None, meta={"long": None}),
    }


EXPECTED = {"bad_json": 1, "bad_text": 1, "corrupt_image": 1, "empty_image": 1, "image_too_large": 1,
            "missing_caption": 2, "truncated_image": 1}
VALID_TAR = ["good0", "good1", "cmyk", "png16", "palpha", "exif6", "listjson"]


def write_tar(path, samples):
    """A webdataset tar as users bring it (a dotted key cannot be stored in one: readers split it)."""
    with tarfile.open(path, "w") as tf:
        for key, members in samples.items():
            if "." not in key:
                for ext, data in members.items():
                    add_member(tf, f"{key}.{ext}", data)
    return path


def write_files(root, samples):
    """img2dataset's files layout: `00000/{key}.{ext}`."""
    d = root / "00000"
    d.mkdir(parents=True)
    for key, members in samples.items():
        for ext, data in members.items():
            (d / f"{key}.{ext}").write_bytes(data)
    return root


def _printed_skips(out: str) -> dict:
    return eval(out.split("; skipped: ")[1].split("; ")[0].strip())  # noqa: S307  our own dict repr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from test_hf_export import tiny_run

    return tiny_run(tmp_path_factory.getbasetemp() / "llm2clip_tiny_run")


def test_fault_corpus_same_counts_at_every_stage(tmp_path, capsys, tiny):
    from llm2clip_nemo.config import load_config
    from llm2clip_nemo.recipes.evaluate import main as eval_main
    from llm2clip_nemo.recipes.extract import ExtractConfig
    from llm2clip_nemo.recipes.extract import run as extract

    samples = corpus()
    (tmp_path / "raw").mkdir()
    tar = str(write_tar(tmp_path / "raw" / "corpus-000000.tar", samples))

    # build from img2dataset's tar layout and from its files layout
    assert data_main(["build", "--img2dataset", str(tmp_path / "raw"), "--out", str(tmp_path / "b_tar"),
                      "--caption-fields", "txt,long"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {len(VALID_TAR)} samples" in out and _printed_skips(out) == EXPECTED
    assert data_main(["build", "--img2dataset", str(write_files(tmp_path / "files", samples)),
                      "--out", str(tmp_path / "b_files"), "--caption-fields", "txt,long"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {len(VALID_TAR) + 1} samples" in out and _printed_skips(out) == EXPECTED
    built = [s.key for s in iter_tar_samples(str(tmp_path / "b_files" / "shard-000000.tar"))]
    assert sorted(built) == sorted([*VALID_TAR, "photo%2Ev1"])

    # inspect (decoding images), the stream, extract and evaluate on the raw tar: the same counts
    t = inspect_shards(tar, decode=True, caption_fields=FIELDS)
    assert t["problems"] == EXPECTED and t["valid"] == len(VALID_TAR)
    stream = ImageTextStream(tiny_stream_config(tar, resampled=False, epochs=1, batch_size=3, open_shards=1,
                                                caption_fields={"txt": 0.5, "long": 0.5}))
    keys = [k for b in stream for k in b["key"]]
    assert sorted(keys) == sorted(VALID_TAR) and stream.summary()["skipped"] == EXPECTED
    teacher = write_tiny_llama(tmp_path / "teacher")
    r = extract(load_config(ExtractConfig, None, [f"data.urls={tar}", f"teacher.path={teacher}", "progress=false",
                                                  f"data.sidecar_dir={tmp_path / 'sc'}"]))
    assert r["skipped_by_reason"] == EXPECTED and r["bad_samples"] == sum(
        n for k, n in EXPECTED.items() if k not in ("bad_json", "bad_text"))
    rc = eval_main(["--model", str(tiny["export"]), "--data", tar, "--caption-field", "txt", "--long-field", "long",
                    "--out", str(tmp_path / "rep"), "--no-plots", "--tasks", "retrieval"])
    assert rc == 0
    res = next(iter(json.loads((tmp_path / "rep" / "report.json").read_text())["results"].values()))
    assert res["skipped_by_reason"] == EXPECTED and res["n_images"] == len(VALID_TAR)
    assert "skipped 6 samples (corrupt_image: 1, empty_image: 1, image_too_large: 1, missing_caption: 2, " \
           "truncated_image: 1; first: " in res["data_summary"]
    assert res["data_summary"].endswith("; dropped bad_json: 1, bad_text: 1; 2 long captions")

    # the built shards are clean for every stage
    clean = str(tmp_path / "b_files")
    assert inspect_shards(clean, decode=True, caption_fields=FIELDS)["problems"] == {}
    capsys.readouterr()

    # where the product refuses: one line, exit code 2
    assert eval_main(["--model", str(tiny["export"]), "--data", tar, "--out", str(tmp_path / "r2"), "--strict"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err == (f"llm2clip-nemo evaluate: error: {tar}: sample listjson: bad_json; fix the shard or run "
                   "without --strict to skip and count such samples.")
    assert data_main(["inspect", tar, "--caption-fields", " , "]) == 2
    assert capsys.readouterr().err.strip() == ("llm2clip-nemo data inspect: --caption-fields ' , ' names no field; "
                                               "use e.g. txt or txt,long")

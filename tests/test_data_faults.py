"""Field faults in keys, captions and metadata (issue 14, items 4-6 and 9): counted, never a traceback."""
from __future__ import annotations

import json
import tarfile

from synthetic_shards import jpeg, tiny_stream_config
from test_fault_corpus import write_files  # img2dataset files layout

from llm2clip_nemo.data.cli import inspect_shards, main
from llm2clip_nemo.data.stream import ImageTextStream
from llm2clip_nemo.data.tario import add_member, iter_tar_samples


def _keys(out):
    return [s.key for s in iter_tar_samples(str(out / "shard-000000.tar"))]


def test_dotted_keys_all_arrive_under_safe_keys_with_the_mapping_in_the_manifest(tmp_path, capsys):
    """Issue 14.4: `photo.v1`, `photo.v2`, `plain3` printed "wrote 3" but readers saw one sample."""
    src = write_files(tmp_path / "i2d", {k: {"jpg": jpeg(i), "txt": f"cap {k}".encode()}
                                           for i, k in enumerate(["photo.v1", "photo.v2", "plain3"])})
    out = tmp_path / "o"
    assert main(["build", "--img2dataset", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 samples" in printed and "2 keys holding '.' or '%' written escaped" in printed
    assert _keys(out) == ["photo%2Ev1", "photo%2Ev2", "plain3"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["key_map"] == {"photo%2Ev1": "photo.v1", "photo%2Ev2": "photo.v2"}
    s = ImageTextStream(tiny_stream_config(str(out), resampled=False, epochs=1, caption_fields={"txt": 1.0}))
    got = {(k, c) for b in s for k, c in zip(b["key"], b["caption"])}
    assert got == {("photo%2Ev1", "cap photo.v1"), ("photo%2Ev2", "cap photo.v2"), ("plain3", "cap plain3")}
    assert s.summary()["skipped"] == {}


def test_tar_layout_samples_without_an_image_are_counted(tmp_path, capsys):
    src = tmp_path / "i2d"
    src.mkdir()
    with tarfile.open(src / "00000.tar", "w") as tf:
        add_member(tf, "a.jpg", jpeg(1))
        add_member(tf, "a.txt", b"with image")
        add_member(tf, "b.gif", b"GIF89a")
        add_member(tf, "b.txt", b"no jpg/png/webp")
    assert main(["build", "--img2dataset", str(src), "--out", str(tmp_path / "o")]) == 0
    assert "wrote 1 samples in 1 shards" in (out := capsys.readouterr().out) and "skipped: {'missing_image': 1}" in out


def test_img2dataset_truncated_or_list_json_is_counted_and_the_shard_written(tmp_path, capsys):
    """Issue 14.5: a truncated `.json` or a JSON list gave a traceback and no shard."""
    src = write_files(tmp_path / "i2d", {
        "000": {"jpg": jpeg(0), "txt": b"fine", "json": b'{"status": "success", "long": "x"}'},
        "001": {"jpg": jpeg(1), "txt": b"cut json", "json": b'{"status": "succ'},
        "002": {"jpg": jpeg(2), "txt": b"list json", "json": b'["a", "b"]'},
        "003": {"jpg": jpeg(3), "txt": b"\xff\xfe not utf-8", "json": b'{"long": "only long"}'},
    })
    out = tmp_path / "o"
    assert main(["build", "--img2dataset", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # bad members are dropped and counted; 003 has no usable txt, so (caption fields: txt) it is skipped
    assert "wrote 3 samples" in printed and "skipped: {'bad_json': 2, 'bad_text': 1, 'missing_caption': 1}" in printed
    assert _keys(out) == ["000", "001", "002"]
    members = [set(s.members) for s in iter_tar_samples(str(out / "shard-000000.tar"))]
    assert members == [{"jpg", "txt", "json"}, {"jpg", "txt"}, {"jpg", "txt"}]
    assert main(["build", "--img2dataset", str(src), "--out", str(tmp_path / "o2"), "--caption-fields", "txt,long"]) == 0
    assert "wrote 4 samples" in capsys.readouterr().out


def test_captions_file_with_numbers_lists_and_non_objects_is_counted(tmp_path, capsys):
    """Issue 14.6: a caption that is a number or a list, or a row that is not an object: AttributeError.
    A cut or non-UTF-8 line is counted the same way (it stopped the build before)."""
    img = tmp_path / "imgs"
    img.mkdir()
    for i in range(4):
        (img / f"p{i}.jpg").write_bytes(jpeg(i))
    rows = [{"image": "p0.jpg", "caption": "fine"}, {"image": "p1.jpg", "caption": 42},
            {"image": "p2.jpg", "caption": ["a", "b"]}, ["p3.jpg", "not an object"], "text",
            {"image": "p3.jpg", "caption": 7, "long": "a long caption"}]
    lines = [json.dumps(r).encode() for r in rows] + [b'{"image": "p0.jpg", "capt', b'{"image": "p0.jpg", "caption": "\xff"}']
    (tmp_path / "caps.jsonl").write_bytes(b"\n".join(lines))  # + a cut line and a non-UTF-8 one
    out = tmp_path / "o"
    assert main(["build", "--images", str(img), "--captions", str(tmp_path / "caps.jsonl"), "--out", str(out),
                 "--caption-fields", "txt,long"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 samples" in printed
    assert "skipped: {'bad_caption': 3, 'bad_row': 4, 'missing_caption': 2}" in printed
    got = [(s.key, s.members.get("txt"), json.loads(s.members["json"]).get("long"))
           for s in iter_tar_samples(str(out / "shard-000000.tar"))]
    assert got == [("000000000", b"fine", None), ("000000005", None, "a long caption")]


def test_inspect_counts_an_empty_txt_as_the_stream_does(tmp_path):
    """Issue 14.9: inspect counted a present-but-empty `.txt` as a caption; the stream does not."""
    p = tmp_path / "s-000000.tar"
    with tarfile.open(p, "w") as tf:
        for k, txt in (("a", b"cap"), ("b", b""), ("c", b"  \n"), ("d", None)):
            add_member(tf, f"{k}.jpg", jpeg(1))
            if txt is not None:
                add_member(tf, f"{k}.txt", txt)
    t = inspect_shards(str(p))
    s = ImageTextStream(tiny_stream_config(str(p), resampled=False, epochs=1, caption_fields={"txt": 1.0}))
    assert [k for b in s for k in b["key"]] == ["a"]
    assert t["problems"] == s.summary()["skipped"] == {"missing_caption": 3}
    assert (t["samples"], t["valid"]) == (4, 1)


def test_csv_row_with_non_utf8_bytes_is_counted_not_fatal(tmp_path, capsys):
    img = tmp_path / "imgs"
    img.mkdir()
    for i in range(2):
        (img / f"p{i}.jpg").write_bytes(jpeg(i))
    (tmp_path / "caps.csv").write_bytes(b"image,caption\np0.jpg,caf\xe9 latin-1\np1.jpg,fine\n")
    assert main(["build", "--images", str(img), "--captions", str(tmp_path / "caps.csv"), "--out", str(tmp_path / "o")]) == 0
    assert "wrote 1 samples" in (out := capsys.readouterr().out) and "skipped: {'bad_row': 1}" in out
    assert _keys(tmp_path / "o") == ["000000001"]

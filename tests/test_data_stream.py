"""The training stream: exact resume (DataLoader workers included), mixing weights, splitting."""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import pytest
import torch
from synthetic_shards import tiny_stream_config as stream_cfg
from synthetic_shards import write_synthetic_shards as make_shards

from llm2clip_nemo.data.spec import DataSourceError
from llm2clip_nemo.data.stream import ImageTextStream
from llm2clip_nemo.data.stream_samples import NoValidSamplesError
from llm2clip_nemo.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    make_shards(str(d), n_shards=6, per_shard=10)
    return str(d / "shard-{000000..000005}.tar")


def _keys(loader, n_batches=None):
    out = []
    for i, b in enumerate(loader):
        out.append(b["key"])
        if n_batches is not None and i + 1 == n_batches:
            break
    return [k for batch in out for k in batch]


@pytest.mark.parametrize("resampled", [False, True])
def test_resume_is_sample_exact_with_two_workers(shards, resampled):
    cfg = stream_cfg(shards, resampled=resampled, epochs=None if resampled else 2)
    n_total = 28 if resampled else None
    full = _keys(ImageTextStream(cfg).loader(num_workers=2), n_total)
    if not resampled:  # two epochs, every sample twice, crossing an epoch boundary in the middle
        assert len(full) == 120 and Counter(full) == Counter({k: 2 for k in set(full)})
    first = ImageTextStream(cfg)
    before = _keys(first.loader(num_workers=2), 7)  # odd count: worker 1 is next
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    assert state["next_worker"] == 1
    second = ImageTextStream(cfg)
    second.load_state_dict(state)
    after = _keys(second.loader(num_workers=2), None if n_total is None else n_total - 7)
    assert before + after == full


def test_resume_in_process_and_twice(shards):
    cfg = stream_cfg(shards, resampled=False, epochs=1, shuffle_buffer=5, batch_size=3)
    full = _keys(ImageTextStream(cfg))
    assert sorted(full) == sorted(set(full)) and len(full) == 60
    got, state = [], None
    for stop in (4, 6, None):  # stop twice mid-epoch, inside shuffle windows
        s = ImageTextStream(cfg)
        if state is not None:
            s.load_state_dict(state)
        got += _keys(s, stop)
        state = s.state_dict()
    assert got == full


def test_resume_refuses_other_worker_count(shards):
    cfg = stream_cfg(shards, resampled=True)
    s = ImageTextStream(cfg)
    _keys(s.loader(num_workers=2), 2)
    t = ImageTextStream(cfg)
    t.load_state_dict(s.state_dict())
    with pytest.raises(DataSourceError, match=r"saved with 2 DataLoader workers per rank but this loader has 1"):
        _keys(t, 1)


def test_mixing_weights_follow_shards_times_factor(tmp_path):
    a = make_shards(str(tmp_path / "a"), n_shards=4, per_shard=2, tag="a")
    b = make_shards(str(tmp_path / "b"), n_shards=2, per_shard=2, tag="b")
    urls = f"{tmp_path}/a/shard-{{000000..000003}}.tar::{tmp_path}/b/shard-{{000000..000001}}.tar"
    assert len(a) == 4 and len(b) == 2
    cfg = stream_cfg(urls, upsampling_factors="1::3", resampled=True, batch_size=50, caption_fields={"txt": 1, "long": 3})
    s = ImageTextStream(cfg)
    n = 0
    for batch in s:
        n += len(batch["key"])
        if n >= 1600:
            break
    summ = s.summary()
    share_b = summ["valid"][1] / sum(summ["valid"])
    assert abs(share_b - 2 * 3 / (4 * 1 + 2 * 3)) < 0.05  # open_clip: shards x factor
    share_long = summ["fields"]["long"] / n
    assert abs(share_long - 0.75) < 0.04


def test_epoch_mode_splits_ranks_and_workers_disjointly(shards):
    seen = {}
    for rank in range(2):
        s = ImageTextStream(stream_cfg(shards, resampled=False, epochs=1, batch_size=2), rank=rank, world_size=2)
        for b in s.loader(num_workers=2):
            who = (rank, b["stream_state"]["worker"])
            seen.setdefault(who, set()).update(b["url"])
            seen.setdefault(("keys", rank), []).extend(b["key"])
    readers = [(r, w) for r in range(2) for w in range(2)]
    url_sets = [seen[r] for r in readers]
    assert all(len(u) >= 1 for u in url_sets)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not url_sets[i] & url_sets[j]
    assert set().union(*url_sets) == {f"{os.path.dirname(shards)}/shard-{i:06d}.tar" for i in range(6)}
    keys = seen[("keys", 0)] + seen[("keys", 1)]
    assert len(keys) == 60 and len(set(keys)) == 60


def test_batch_layout_and_normalisation(shards):
    s = ImageTextStream(stream_cfg(shards, resampled=True, transform=dict(image_size=16, train=False)))
    b = next(iter(s))
    assert b["image"].shape == (4, 3, 16, 16) and b["image"].dtype == torch.float32
    assert len(b["key"]) == len(b["caption"]) == len(b["caption_field"]) == 4
    # Solid-colour JPEGs: undo the OpenAI normalisation and land on [0, 1] pixel values.
    pix = b["image"] * torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1) + torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    for img, cap, field, key in zip(pix, b["caption"], b["caption_field"], b["key"]):
        i = int(key)
        want = torch.tensor([i * 37 % 256, i * 11 % 256, 90]) / 255.0
        assert torch.allclose(img.mean(dim=(1, 2)), want, atol=6 / 255)  # JPEG is lossy
        assert cap == (f"alt {i}" if field == "txt" else f"a long caption of {i}")


def test_stream_has_no_token_output_of_its_own(shards):
    """The online teacher prepares captions by its contract; the stream has no second length setting."""
    from llm2clip_nemo.data.config import StreamConfig

    assert not hasattr(StreamConfig(), "max_text_tokens")
    with pytest.raises(ValueError, match=r"^output='tokens' must be one of \('captions', 'embeddings'\)$"):
        ImageTextStream(stream_cfg(shards), output="tokens")
    b = next(iter(ImageTextStream(stream_cfg(shards))))
    assert set(b) == {"image", "key", "caption", "caption_field", "source", "url", "stream_state"}


def test_unreadable_path_and_empty_source_errors(shards, tmp_path):
    shutil.copy(shards.replace("{000000..000005}", "000000"), tmp_path / "nope-000000.tar")  # 000001 is missing
    with pytest.raises(DataSourceError, match=r"shard '.*/nope-000001.tar' \(from source .*\) does not exist"):
        ImageTextStream(stream_cfg(f"{tmp_path}/nope-{{000000..000001}}.tar"))
    with pytest.raises(DataSourceError, match=r"has 3 values for 2 sources"):
        ImageTextStream(stream_cfg(shards + "::" + shards, upsampling_factors="1::2::3"))
    # A source whose captions never match the policy: no valid sample -> a clear error.
    s = ImageTextStream(stream_cfg(shards, caption_fields={"nonexistent": 1.0}, no_valid_error_after=10))
    with pytest.raises(NoValidSamplesError, match=r"data source '.*' gave 10 items and no valid sample .*missing_caption"):
        next(iter(s))
    s = ImageTextStream(stream_cfg(shards, resampled=False, epochs=1), world_size=4, rank=0)
    with pytest.raises(DataSourceError, match=r"epoch 0 has 6 shards for 4 data slots \(ranks\) x 2 workers = 8 readers"):
        next(iter(s.loader(num_workers=2)))


@pytest.mark.parametrize("stop", [3, 11])
def test_resume_when_workers_hold_unequal_shares(tmp_path, stop):
    # 5 shards over 2 workers: worker 0 reads 3 (8 batches, the last partial), worker 1 reads 2 (5 batches)
    # and finishes first; stop before and after that point.
    make_shards(str(tmp_path), n_shards=5, per_shard=10)
    cfg = stream_cfg(str(tmp_path), resampled=False, epochs=1)
    full = _keys(ImageTextStream(cfg).loader(num_workers=2))
    assert len(full) == 50 and len(set(full)) == 50
    first = ImageTextStream(cfg)
    before = _keys(first.loader(num_workers=2), stop)
    second = ImageTextStream(cfg)
    second.load_state_dict(first.state_dict())
    assert before + _keys(second.loader(num_workers=2)) == full


def test_config_validation_names_field_and_fix():
    from llm2clip_nemo.config.loader import ConfigError, load_config
    from llm2clip_nemo.data.config import StreamConfig

    c = load_config(StreamConfig, None, ["urls=a/{0..3}.tar", "caption_fields.txt=0", "caption_fields.long=1", "epochs=2"])
    assert c.caption_fields == {"txt": 0.0, "long": 1.0} and c.epochs == 2
    with pytest.raises(ConfigError, match=r"^output is no longer set in configs: it is chosen by the model from "
                                          r"model.teacher_mode \(offline: embeddings, online: captions\). Remove output "):
        load_config(StreamConfig, None, ["output=captions"])
    with pytest.raises(ConfigError, match=r"transform.scale=\[0.0, 1.0\] must be \[lo, hi\] with 0 < lo <= hi <= 1"):
        load_config(StreamConfig, None, ["transform.scale=[0,1]"])

"""The demo's summary table names each caption-retrieval measure for what it is."""
from __future__ import annotations

from llm2clip_nemo.demo.report import summary_table


def test_summary_table_labels_paper_cra_and_all_pairs_apart():
    row = dict.fromkeys(("long_i2t_R@1", "long_t2i_R@1", "long_i2t_R@5", "long_t2i_R@5", "short_i2t_R@1",
                         "short_t2i_R@1", "final_loss"), 1.0)
    table = summary_table({"cra_before": 30.0, "cra_after": 83.5, "cra_all_pairs_before": 0.25,
                           "cra_all_pairs_after": 49.75, "clip": {"cc": row, "raw": row}, "chance_R@1": 1.2,
                           "export_equal": True}).splitlines()
    assert table[2] == ("| stage 1 CRA (paper protocol: 1st caption vs all 2nd captions), held-out (before -> after) "
                        "| 30.0 -> 83.5 | 30.0 |")
    assert table[3] == ("| stage 1 all-pairs caption retrieval (each caption vs all others), held-out (before -> after) "
                        "| 0.2 -> 49.8 | 0.2 |")


def test_ab_rows_name_each_variant_and_its_scores():
    from llm2clip_nemo.demo.pipeline import ab_variants
    from llm2clip_nemo.demo.report import ab_table

    assert ab_variants(250) == {"every caption, no EMA": ["model.train_ds.caption_sampling=all"],
                                "one caption, EMA": ["model.ema.enabled=true", "model.ema.decay=0.9800",
                                                     "model.ema.warmup_steps=25"]}
    rows = ab_table({"one caption, no EMA": {"i2t_R@1": 12.5, "t2i_R@1": 10.0},
                     "every caption, no EMA": {"i2t_R@1": 15.25, "t2i_R@1": 9.0}}).splitlines()
    assert rows[2:] == ["| one caption, no EMA | 12.5 | 10.0 |", "| every caption, no EMA | 15.2 | 9.0 |"]


def test_third_party_noise_is_counted_not_printed():
    """The demo's screen: NeMo INFO lines and third-party warnings (NeMo routes Python warnings through
    its logger) are dropped and counted by package; our own warnings and any error still print."""
    import logging

    from llm2clip_nemo.demo.console import ThirdPartyNoise

    def rec(level, msg):
        return logging.LogRecord("nemo_logger", level, "nemo_logging.py", 364, msg, None, None)

    f = ThirdPartyNoise()
    kept = [f.filter(r) for r in (
        rec(logging.WARNING, "/v/lib/python3.11/site-packages/megatron/core/optimizer/__init__.py:24: UserWarning: TE"),
        rec(logging.WARNING, "/v/lib/python3.11/site-packages/megatron/core/optimizer/clip_grads.py:29: UserWarning"),
        rec(logging.WARNING, "/v/lib/python3.11/site-packages/lightning/fabric/plugins/environments/slurm.py:204: srun"),
        rec(logging.INFO, "ExpManager schema"),
        rec(logging.WARNING, "/work/llm2clip_nemo/convert/hf_export.py:124: UserWarning: ours"),
        rec(logging.ERROR, "/v/lib/python3.11/site-packages/megatron/x.py: boom"),
    )]
    assert kept == [False, False, False, False, True, True]
    assert f.summary() == ("third-party warnings not shown: 3 (megatron 2, lightning 1); "
                           "python -m llm2clip_nemo.demo --verbose shows them")

"""The demo's summary table names each caption-retrieval measure for what it is."""
from __future__ import annotations

from llm2clip_nemo.demo import summary_table


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

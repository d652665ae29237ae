"""The paper's numbers as shipped: the headline claims follow from Table 1."""

from gqa_lib import paper


def test_table1_headline_speedups_and_quality_gaps():
    t = paper.TABLE1
    assert round(t["MHA-XXL"]["T_infer"] / t["GQA-8-XXL"]["T_infer"], 1) == 5.4
    assert round(t["MHA-XXL"]["T_infer"] / t["MQA-XXL"]["T_infer"], 1) == 6.3
    assert round(t["MHA-XXL"]["Average"] - t["GQA-8-XXL"]["Average"], 1) == 0.1
    assert round(t["MHA-XXL"]["Average"] - t["MQA-XXL"]["Average"], 1) == 0.6


def test_figure6_shape():
    assert len(paper.FIGURE6_GROUPS) == len(paper.FIGURE6_SECONDS)
    by_g = dict(zip(paper.FIGURE6_GROUPS, paper.FIGURE6_SECONDS))
    # GQA-8 keeps most of MQA's saving: (t_MHA - t_GQA8) / (t_MHA - t_MQA)
    assert round((by_g[64] - by_g[8]) / (by_g[64] - by_g[1]), 3) == 0.985


def test_the_uptraining_facts_the_chapters_cite():
    from gqa_lib import paper

    assert paper.UPTRAIN_ALPHA == paper.FIGURE4_ALPHA == 0.05
    assert paper.UPTRAIN_XXL_TPUV3_CHIP_DAYS == 600 and paper.MQA_UPTRAINED_RUNS_AVERAGED == 3

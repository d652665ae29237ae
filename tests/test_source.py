"""gqa_lib.show_source: the listings chapters display instead of copies of library code."""

import pytest

import gqa_lib
from gqa_lib.source import show_source


def test_listing_is_the_real_source_of_a_function_and_of_a_method():
    listing = show_source(gqa_lib.grouped_attention)
    assert str(listing).startswith("def grouped_attention(")
    assert listing.filename == "gqa_lib/core/attention.py"
    method = show_source(gqa_lib.TransformerLM.generate)
    assert str(method).lstrip().startswith("@torch.no_grad()") or str(method).startswith("def generate(")
    assert not str(method).startswith(" ")  # dedented


def test_html_is_highlighted_with_inline_styles_and_escaped():
    page = show_source(gqa_lib.repeat_kv)._repr_html_()
    assert "<pre" in page and "style=" in page and "class=\"gqa-source\"" in page
    assert "repeat_kv" in page and "<span" in page  # pygments spans, styled inline (no style sheet needed)
    assert "->" not in page.split("<pre", 1)[1] or "-&gt;" in page  # code is escaped


def test_objects_without_source_are_refused_by_name():
    with pytest.raises(ValueError, match="no Python source"):
        show_source(len)
    with pytest.raises(ValueError, match="no Python source"):
        show_source(3)

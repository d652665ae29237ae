"""The KV-cache calculator of chapter 9 in a real browser: its read-out equals gqa_lib.speed.capacity.

The page's script only looks up numbers that Python computed and combines them
with the module's formulas; this test sets the controls as a reader would and
compares what the page shows with the Python functions themselves.
"""

from __future__ import annotations

import pytest

from gqa_lib.model_configs import load_real_model
from gqa_lib.speed import capacity
from sitekit import fmt_bytes

PAGE = "chapters/09_real_models.html"

SET_CONTROLS = """
const [model, dtype, device, g, ctx, batch] = arguments;
const root = document.querySelector('.gqa-calculator');
if (!root) return 'no calculator on the page';
const el = (n) => root.querySelector('[data-calc="' + n + '"]');
const pick = (n, label) => {
  const s = el(n), i = [...s.options].findIndex((o) => o.textContent.startsWith(label));
  if (i < 0) throw new Error('no option ' + label + ' in ' + n);
  s.value = i; s.dispatchEvent(new Event('change'));
};
pick('model', model); pick('dtype', dtype); pick('device', device);
for (const [n, v] of [['G', g], ['context', ctx], ['batch', batch]]) { el(n).value = v; el(n).dispatchEvent(new Event('input')); }
const read = {};
for (const n of ['kv-seq', 'fits-device', 'tps', 'G-label', 'context-label', 'batch-label']) read[n] = el(n).textContent;
read.state = JSON.parse(root.dataset.state);
read.bars = el('plot').data.map((t) => t.y.slice());
return read;
"""


CASES = [
    # model, dtype label, device label, G, context, batch
    ("Llama 3.1 8B", "bf16", "NVIDIA H100", 8, 8192, 16),
    ("Llama 2 7B", "int8", "NVIDIA A100 80GB", 4, 32768, 8),
    ("Mixtral 8x7B", "bf16", "NVIDIA H200", 2, 4096, 64),
    ("Gemma 2 9B", "fp32", "NVIDIA L4", 1, 65536, 2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_calculator_shows_what_gqa_lib_computes(browser, site, case):
    name, dtype, device_label, g, ctx, batch = case
    browser.get(site.url(PAGE))
    m = load_real_model(name)
    divisors = [d for d in range(1, m.n_heads + 1) if m.n_heads % d == 0]
    read = browser.execute_script(
        SET_CONTROLS, name, dtype, device_label, divisors.index(g), capacity.CONTEXTS.index(ctx),
        capacity.BATCHES.index(batch))
    assert isinstance(read, dict), read
    nbytes = next(v for k, v in capacity.CACHE_DTYPES.items() if k.startswith(dtype))
    device = next(d for d in capacity.DEVICES if d.name.startswith(device_label))
    assert read["state"]["model"] == name and read["state"]["G"] == g and read["state"]["context"] == ctx
    assert read["kv-seq"] == fmt_bytes(capacity.kv_bytes_per_sequence(m, ctx, g, nbytes))
    fits = capacity.max_batch(m, device.memory_bytes, ctx, g, nbytes)
    assert read["fits-device"] == f"{fits:,}"
    tps = capacity.decode_tokens_per_second_bound(m, batch, ctx, device.bandwidth_bytes_per_s, g, nbytes)
    assert read["tps"].split(" ")[0] == f"{round(tps):,}"
    assert ("does not fit" in read["tps"]) == (batch > fits)
    # the three panels: one bar per G, the cache panel in GiB
    cache, batches, _ = read["bars"]
    assert cache == pytest.approx([capacity.kv_bytes_per_sequence(m, ctx, d, nbytes) / 2**30 for d in divisors])
    assert batches == [capacity.max_batch(m, device.memory_bytes, ctx, d, nbytes) for d in divisors]

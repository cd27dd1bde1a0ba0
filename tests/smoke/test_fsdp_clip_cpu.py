"""trainer=fsdp clips gradients by the global norm (issue 32): 2 CPU processes (gloo) match one clipping process.

Before, conf/trainer/fsdp.yaml had to set ``gradient_clip_val: null``: Lightning's FSDP precision plugin raises on
norm clipping. ``CausalLMLitModule.configure_gradient_clipping`` clips through the FSDP root's ``clip_grad_norm_``
(the norm over all ranks' shards), so a clip small enough to bind on every step gives the one-process result, where
Lightning clips with ``torch.nn.utils.clip_grad_norm_``. The narrow 2-layer LLaMA of test_fsdp_cpu.py, fp32.
"""

import pytest
import torch

from tests.smoke.test_fsdp_cpu import NARROW, make_bank, moved, train

pytestmark = pytest.mark.slow
CLIP = "trainer.gradient_clip_val=0.01"  # far below the gradient norms: every step is clipped


def test_fsdp_clipping_by_norm_matches_one_process(tmp_path):
    bank = tmp_path / "bank"
    make_bank(bank, NARROW)
    common = ["trainer.precision=32-true", CLIP, *NARROW]
    one = train(tmp_path, "one", "cpu", 1, bank, common, 29571)
    fsdp = train(tmp_path, "fsdp", "fsdp", 2, bank, common, 29572)
    assert moved(one) > 1e-6, "the MoE did not train"
    for key, ref in one["weights"].items():
        torch.testing.assert_close(fsdp["weights"][key], ref, atol=1e-5, rtol=1e-4, msg=f"fsdp: {key}")

"""The exported decode step checked as it is used: chained step after step, its own cache fed back
in, against PyTorch's step and against transformers' `generate`, from a prompt's cache.

A step file that matches PyTorch on one call with random cache can still go wrong when its
outputs feed its inputs (a cache axis fixed at export, positions counted wrongly): this runs
`steps` tokens of greedy decoding on the runtime and compares every step's logits with PyTorch's
and the tokens with `generate(do_sample=False)`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.decoder.step import DecodeStep, Prefill
from edgeprune.runtime_bench import Runtime

STEPS = 8


@torch.no_grad()
def chained(
    model: nn.Module, layers: int, runtime: Runtime, session: Any, prompt: torch.Tensor, steps: int = STEPS
) -> dict[str, Any]:
    """Greedy decoding of `steps` tokens after `prompt` (1, P) on the runtime and in PyTorch."""
    out = Prefill(model, layers).eval()(prompt)
    first = int(out[0][0, -1].argmax())
    past_t = list(out[1:])
    past_r = [t.numpy() for t in out[1:]]
    step = DecodeStep(model, layers).eval()
    token_t = token_r = first
    tokens_r, diff, scale = [first], 0.0, 0.0
    for _ in range(steps - 1):
        ref = step(torch.tensor([[token_t]]), *past_t)
        got = runtime.run(session, [np.array([[token_r]], dtype=np.int64), *past_r])
        logits_t, logits_r = ref[0][0, -1].numpy(), np.asarray(got[0])[0, -1]
        if token_t == token_r:  # compared while both sides decode the same sequence
            diff = max(diff, float(np.max(np.abs(logits_t - logits_r))))
            scale = max(scale, float(np.max(np.abs(logits_t))))
        token_t, token_r = int(logits_t.argmax()), int(logits_r.argmax())
        tokens_r.append(token_r)
        past_t, past_r = list(ref[1:]), [np.asarray(g) for g in got[1:]]
    generated = model.generate(  # type: ignore[operator]
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=steps, do_sample=False, min_new_tokens=steps
    )[0, prompt.shape[1] :].tolist()
    tol = runtime.atol + runtime.rtol * scale
    result = {
        "steps": steps,
        "prompt_tokens": int(prompt.shape[1]),
        "max_abs_diff": diff,
        "tolerance": tol,
        "runtime_tokens": tokens_r,
        "generate_tokens": generated,
        "same_tokens": tokens_r == generated,
    }
    if not diff <= tol:
        raise EdgepruneError(
            f"the exported decode step, chained over {steps} tokens on {runtime.name}, differs from PyTorch by "
            f"{diff:.3g} (over {tol:.3g}); the export is wrong and its latency would not count"
        )
    return result

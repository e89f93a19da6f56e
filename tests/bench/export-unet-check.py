"""The diffusers export of a fine-tuned UNet, loaded by diffusers itself, against hollowc's ONNX export
of the same fine-tune (issue 31 item 5). Run tests/bench/export-unet-check.ts <dir> first, then with
the oracle (../shared/oracle/README.md):
  eval "$(bash ../shared/oracle/setup.sh /tmp/hollowc-oracle | tail -1)"
  /usr/bin/python3 tests/bench/export-unet-check.py <dir> tests/fixtures/diffusers/sd15-tiny
UNet2DConditionModel.from_pretrained(<dir>/diffusers) must load every tensor (no missing or unexpected
keys) and give the ONNX UNet's output on the fixture's inputs (batch 1 and 2) to float tolerance.
"""
import json, os, sys
import numpy as np
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention


def scores(self, query, key, attention_mask=None):
    # torch 1.13's CPU baddbmm with beta=0 on torch.empty gives sporadic NaN (the fixture's note)
    s = torch.baddbmm(torch.zeros(query.shape[0], query.shape[1], key.shape[1], dtype=query.dtype), query, key.transpose(-1, -2), beta=0, alpha=self.scale)
    return s.softmax(dim=-1).to(query.dtype)


Attention.get_attention_scores = scores
dir, fixture = sys.argv[1], sys.argv[2]
unet, info = UNet2DConditionModel.from_pretrained(os.path.join(dir, "diffusers"), output_loading_info=True)
unet = unet.eval()
result = {"loading_info": {k: len(v) for k, v in info.items()}}
for batch, sub in [(1, "inputs"), (2, "inputs2")]:
    x = [torch.from_numpy(np.load(os.path.join(fixture, sub, f))) for f in ("sample.npy", "timestep.npy", "encoder_hidden_states.npy")]
    with torch.no_grad():
        out = unet(*x).sample.numpy()
    ref = np.load(os.path.join(dir, f"onnx_out{batch}.npy"))
    result[f"batch{batch}"] = {"max_abs_diff": float(np.abs(out - ref).max()), "max_abs_out": float(np.abs(ref).max())}
print(json.dumps(result))
assert all(v == 0 for v in result["loading_info"].values()), result
assert all(result[f"batch{b}"]["max_abs_diff"] < 1e-4 for b in (1, 2)), result

"""PyTorch autograd reference for `train base` on the sd15-tiny fixture (issue 31): the loss and the
gradient of every UNet parameter, by its diffusers name in torch's layout, for `hollow none` and for
the 39.2% cut. Written to tests/fixtures/diffusers/sd15-tiny-base/ (see PROVENANCE there); the test
suite reads those files and needs no torch.

Run with the oracle (../shared/oracle/README.md):
  eval "$(bash ../shared/oracle/setup.sh /tmp/hollowc-oracle | tail -1)"
  /usr/bin/python3 tests/bench/base-grads-reference.py tests/fixtures/diffusers/sd15-tiny tests/fixtures/diffusers/sd15-tiny-base

The model: diffusers' UNet2DConditionModel with the fixture's config (manifest.json model.config_args),
its parameters read from the fixture's model.onnx. torch.onnx.export (TorchScript) stores a Linear
weight read by MatMul pre-transposed as onnx::MatMul_<N> and a GroupNorm's affine as onnx::Mul_<N> /
onnx::Add_<N> [C, 1, 1]; those are named here from their node's scope, independently of hollowc's
reader. The load is checked: every parameter filled exactly once, and the output equal to the
fixture's ref/full_out.npy.

Cases (batch 1, inputs/ and ref/target.npy of the fixture, loss = mean((out - target)^2)):
  full: no hollowing, every parameter trains.
  cut:  the 39.2% cut: the hidden state entering up_blocks.1 is the fixture's ref/hollow_activation.npy
        (computed by the same base model), so the hollowed blocks get no gradient and a kept down
        layer's gradient flows only through its skip. Checked here: for every kept down-path
        parameter, grad(full) = grad(cut) + the part that flows through the middle (the activation's
        gradient in the cut case, pulled back through the live activation of the full model).
"""
import json, os, sys, types
import numpy as np
import onnx
from onnx import numpy_helper
import torch
from safetensors.torch import save_file
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
manifest = json.load(open(os.path.join(src, "manifest.json")))
torch.manual_seed(0)


def scores(self, query, key, attention_mask=None):
    # As the fixture's reference (manifest.json reference_computation_note): torch 1.13's CPU baddbmm
    # with beta=0 on torch.empty returns sporadic NaN for small matrices; zeros are what beta=0 means.
    assert attention_mask is None and not self.upcast_attention and not self.upcast_softmax
    s = torch.baddbmm(torch.zeros(query.shape[0], query.shape[1], key.shape[1], dtype=query.dtype), query, key.transpose(-1, -2), beta=0, alpha=self.scale)
    return s.softmax(dim=-1).to(query.dtype)


Attention.get_attention_scores = scores

unet = UNet2DConditionModel(**manifest["model"]["config_args"]).eval()

# --- parameters from the ONNX export, named from the nodes that read them ---
model = onnx.load(os.path.join(src, "model.onnx"))
inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
params = dict(unet.named_parameters())
values = {}
for name in inits:
    if name in params:
        values[name] = inits[name]
for node in model.graph.node:
    scope = ".".join(p for p in node.name.split("/")[1:-1])
    for i, x in enumerate(node.input):
        if not x.startswith("onnx::") or x not in inits:
            continue
        if node.op_type == "MatMul" and i == 1:
            name, value = scope + ".weight", inits[x].T  # [in, out] -> torch's [out, in]
        elif node.op_type == "Mul" and inits[x].ndim == 3:
            name, value = scope + ".weight", inits[x].reshape(-1)  # GroupNorm scale [C, 1, 1]
        elif node.op_type == "Add" and inits[x].ndim == 3:
            name, value = scope + ".bias", inits[x].reshape(-1)
        else:
            continue
        assert name in params and name not in values, name
        values[name] = value
missing = sorted(set(params) - set(values))
assert not missing, missing[:5]
with torch.no_grad():
    for name, p in params.items():
        assert tuple(p.shape) == values[name].shape, (name, p.shape, values[name].shape)
        p.copy_(torch.from_numpy(np.ascontiguousarray(values[name])))


def npy(rel):
    return torch.from_numpy(np.load(os.path.join(src, rel)))


sample, timestep, ehs = npy("inputs/sample.npy"), npy("inputs/timestep.npy"), npy("inputs/encoder_hidden_states.npy")
target, activation = npy("ref/target.npy"), npy("ref/hollow_activation.npy")
with torch.no_grad():
    full_out = unet(sample, timestep, ehs).sample
load_check = float((full_out - npy("ref/full_out.npy")).abs().max())
assert load_check < 1e-5, load_check


def run(replace=None):
    """Loss and every parameter's gradient; `replace` is the hidden state entering up_blocks.1."""
    unet.zero_grad(set_to_none=True)
    block = unet.up_blocks[1]
    original = block.forward
    live = {}
    if replace is not None:
        def forward(self, *args, **kwargs):
            live["h"] = kwargs["hidden_states"]
            kwargs["hidden_states"] = replace
            return original(*args, **kwargs)
        block.forward = types.MethodType(forward, block)
    try:
        loss = ((unet(sample, timestep, ehs).sample - target) ** 2).mean()
        loss.backward(retain_graph=True)
    finally:
        block.forward = original
    grads = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in unet.named_parameters()}
    return loss.detach(), grads, live.get("h")


loss_full, grads_full, _ = run()
hollowed_modules = manifest["hollow"]["hollowed_modules"]
hollowed = lambda n: any(n == m or n.startswith(m + ".") for m in hollowed_modules)

act = activation.clone().requires_grad_(True)
loss_cut, grads_cut, live = run(replace=act)
# The middle's share of a down-path parameter's gradient: the activation's gradient pulled back
# through the live (full-model) activation.
kept_down = [n for n in params if n.startswith("down_blocks.") and not hollowed(n)]
through = torch.autograd.grad(live, [params[n] for n in kept_down], grad_outputs=act.grad, allow_unused=True)
through = {n: (g if g is not None else torch.zeros_like(params[n])) for n, g in zip(kept_down, through)}
decomposition = max(float((grads_full[n] - grads_cut[n] - through[n]).abs().max() / grads_full[n].abs().max().clamp_min(1e-30)) for n in kept_down)
middle_share = max(float(through[n].abs().max() / grads_full[n].abs().max().clamp_min(1e-30)) for n in kept_down)
hollowed_nonzero = [n for n in params if hollowed(n) and float(grads_cut[n].abs().max()) != 0]

save_file({n: g for n, g in grads_full.items()}, os.path.join(out, "grads_full.safetensors"))
save_file({n: g for n, g in grads_cut.items() if not hollowed(n)}, os.path.join(out, "grads_cut.safetensors"))
save_file({n: through[n] for n in kept_down}, os.path.join(out, "through_middle.safetensors"))
report = {
    "what": "d loss / d every UNet parameter (diffusers names, torch layout) on sd15-tiny: grads_full (hollow none), grads_cut (39.2% cut: kept parameters only; hollowed ones get none), through_middle (kept down-path parameters: the share of grads_full that flows through the hollowed middle)",
    "made_by": "tests/bench/base-grads-reference.py (PyTorch autograd, float32, eval mode)",
    "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "numpy": np.__version__, "diffusers": "0.21.4 (../shared/oracle)"},
    "loss_full": float(loss_full),
    "loss_cut": float(loss_cut),
    "parameters": len(params),
    "parameter_values": sum(p.numel() for p in params.values()),
    "cut_parameters": sum(1 for n in params if not hollowed(n)),
    "checks": {
        "load_vs_ref_full_out_maxabs": load_check,
        "full_minus_cut_minus_through_middle_max_rel": decomposition,
        "through_middle_max_rel_of_full": middle_share,
        "hollowed_parameters_with_nonzero_cut_grad": len(hollowed_nonzero),
    },
}
json.dump(report, open(os.path.join(out, "reference.json"), "w"), indent=1)
print(json.dumps(report["checks"]), report["loss_full"], report["loss_cut"])

"""The PyTorch anchor of the README's memory tables: diffusers + PyTorch on the CPU at the shapes of
hollowc's bench rows (tests/bench/train-step.ts), one configuration per process.

  eval "$(bash ../shared/oracle/setup.sh /tmp/hollowc-oracle | tail -1)"
  /usr/bin/python3 tests/bench/pytorch-anchor.py MODE [--family sd21] [--latent 64] [--rank 128]
        [--cut 39.2%] [--steps 3] [--threads 2] [--seed 0]

MODE:
  infer          one UNet forward (no grad), batch 1
  lora           LoRA fine-tuning of the whole UNet: rank r on attn1/attn2 to_q, to_k, to_v, to_out.0,
                 forward + backward + AdamW (lr 1e-4), the base frozen
  hollowed       the same on the hollowed net (paper 4.3): the hollowed layers deleted, the hollow
                 activation an input, LoRA on the kept layers only
  full           full fine-tuning of the whole UNet (every parameter, AdamW)
  full-hollowed  full fine-tuning of the kept layers of the hollowed net

Weights are random (the real checkpoints' configs; no weights exist here), as in hollowc's rows.
diffusers v0.21.4 on torch 1.13 computes attention as baddbmm + softmax (no fused attention).
Peak memory is VmHWM, reset (clear_refs 5) after the model is built and the hollowed layers are
deleted, so it is the peak of the measured steps with the model in memory: building the full model
first would otherwise count weights a hollowed run never holds. Prints one JSON line.
"""
import argparse, gc, json, os, time
import torch
from torch import nn
from diffusers import UNet2DConditionModel

CONFIGS = {  # as ../shared/oracle/export_real.py (the checkpoints' unet/config.json fields that count)
    "sd15": dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
    "sd21": dict(sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
}
COMMON = dict(down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
              up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
              block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
# skips kept by each preset (DESIGN.md: a cut keeps the down path through some skip; 12 = none hollowed but the mid block)
KEPT_SKIPS = {"11.5%": 12, "20.8%": 11, "30.1%": 10, "39.2%": 9, "56.6%": 8, "73.3%": 7, "84.3%": 6}
LORA_TARGETS = ("to_q", "to_k", "to_v")


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class LoRALinear(nn.Module):
    """W x + (alpha / r) B A x, B = 0 at the start (what hollowc's insert-lora computes)."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / rank)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x, *args, **kwargs):
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale


def add_lora(unet, rank):
    for name, m in list(unet.named_modules()):
        if name.endswith(".attn1") or name.endswith(".attn2"):
            for t in LORA_TARGETS:
                setattr(m, t, LoRALinear(getattr(m, t), rank, rank))
            m.to_out[0] = LoRALinear(m.to_out[0], rank, rank)


def down_path(unet, x, temb, ehs, kept):
    """conv_in and the down layers up to `kept` skips: (skips, hidden state)."""
    h = unet.conv_in(x)
    skips = [h]
    for b in unet.down_blocks:
        attns = getattr(b, "attentions", None)
        for k, res in enumerate(b.resnets):
            if len(skips) >= kept:
                return skips, h
            h = res(h, temb)
            if attns is not None:
                h = attns[k](h, encoder_hidden_states=ehs, return_dict=False)[0]
            skips.append(h)
        if b.downsamplers is not None:
            if len(skips) >= kept:
                return skips, h
            for d in b.downsamplers:
                h = d(h)
            skips.append(h)
    return skips, h


def up_path(unet, h, skips, temb, ehs, kept):
    """The up layers that consume skips kept-1 .. 0 (last-first), then the output head."""
    nxt = 11  # the skip the next up resnet consumes
    for b in unet.up_blocks:
        attns = getattr(b, "attentions", None)
        ran = False
        for k, res in enumerate(b.resnets):
            if nxt >= kept:
                nxt -= 1
                continue
            h = res(torch.cat([h, skips[nxt]], dim=1), temb)
            nxt -= 1
            if attns is not None:
                h = attns[k](h, encoder_hidden_states=ehs, return_dict=False)[0]
            ran = True
        if b.upsamplers is not None and ran:
            for u in b.upsamplers:
                h = u(h)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


def hollow_activation_shape(unet, kept, latent, dim):
    """The input of the first kept up layer, found on an 8x8 latent and scaled (spatial sizes scale with the latent)."""
    seen = {}
    first = None
    nxt = 11
    for b in unet.up_blocks:
        for res in b.resnets:
            if nxt < kept and first is None:
                first = res
            nxt -= 1
    def record(module, args):
        seen.setdefault("x", args[0].shape)  # returns None: the input is left as it is

    hook = first.register_forward_pre_hook(record)
    with torch.no_grad():
        unet(torch.zeros(1, 4, 8, 8), torch.tensor([1.0]), torch.zeros(1, 77, dim))
    hook.remove()
    c_total, h8, w8 = seen["x"][1:]
    skip_channels = None
    # the resnet's input is cat(h, skip): the hollow activation is h, the part before the skip
    nxt = 11
    for b in unet.up_blocks:
        for res in b.resnets:
            if res is first:
                skip_channels = skip_channel_count(unet, nxt)
            nxt -= 1
    scale = latent // 8
    return (1, c_total - skip_channels, h8 * scale, w8 * scale)


def skip_channel_count(unet, index):
    chans = [unet.conv_in.out_channels]
    for b in unet.down_blocks:
        for res in b.resnets:
            chans.append(res.out_channels)
        if b.downsamplers is not None:
            chans.append(b.downsamplers[0].out_channels)
    return chans[index]


def delete_hollowed(unet, kept):
    """Drops the hollowed layers' modules (their weights are never held by a hollowed run)."""
    count = 0
    idx = 1
    for b in unet.down_blocks:
        for k in range(len(b.resnets)):
            if idx >= kept:
                count += sum(p.numel() for p in b.resnets[k].parameters())
                b.resnets[k] = nn.Identity()
                if getattr(b, "attentions", None) is not None:
                    count += sum(p.numel() for p in b.attentions[k].parameters())
                    b.attentions[k] = nn.Identity()
            idx += 1
        if b.downsamplers is not None:
            if idx >= kept:
                count += sum(p.numel() for p in b.downsamplers.parameters())
                b.downsamplers = None
            idx += 1
    count += sum(p.numel() for p in unet.mid_block.parameters())
    unet.mid_block = None
    nxt = 11
    for b in unet.up_blocks:
        any_kept = False
        for k in range(len(b.resnets)):
            if nxt >= kept:
                count += sum(p.numel() for p in b.resnets[k].parameters())
                b.resnets[k] = nn.Identity()
                if getattr(b, "attentions", None) is not None:
                    count += sum(p.numel() for p in b.attentions[k].parameters())
                    b.attentions[k] = nn.Identity()
            else:
                any_kept = True
            nxt -= 1
        if b.upsamplers is not None and not any_kept:
            count += sum(p.numel() for p in b.upsamplers.parameters())
            b.upsamplers = None
    return count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["infer", "lora", "hollowed", "full", "full-hollowed"])
    ap.add_argument("--family", choices=sorted(CONFIGS), default="sd21")
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--cut", choices=sorted(KEPT_SKIPS), default="39.2%")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dim = CONFIGS[a.family]["cross_attention_dim"]
    unet = UNet2DConditionModel(**COMMON, **CONFIGS[a.family])
    params_full = sum(p.numel() for p in unet.parameters())
    hollowed = a.mode in ("hollowed", "full-hollowed")
    kept = KEPT_SKIPS[a.cut] if hollowed else 12
    h_shape = hollow_activation_shape(unet, kept, a.latent, dim) if hollowed else None
    removed = delete_hollowed(unet, kept) if hollowed else 0
    for p in unet.parameters():
        p.requires_grad_(a.mode in ("full", "full-hollowed"))
    if a.mode in ("lora", "hollowed"):
        add_lora(unet, a.rank)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4) if trainable else None
    gc.collect()
    x = torch.randn(1, 4, a.latent, a.latent)
    ehs = torch.randn(1, 77, dim)
    target = torch.randn(1, 4, a.latent, a.latent)
    h_in = torch.randn(*h_shape) if hollowed else None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS: the peak from here on
    times = []
    for step in range(a.steps):
        t = torch.tensor([float(torch.randint(0, 1000, (1,)))])
        t0 = time.time()
        if a.mode == "infer":
            with torch.no_grad():
                unet(x, t, ehs, return_dict=False)
        else:
            temb = unet.time_embedding(unet.time_proj(t).to(x.dtype))
            if hollowed:
                skips, _ = down_path(unet, x, temb, ehs, kept)
                out = up_path(unet, h_in, skips, temb, ehs, kept)
            else:
                out = unet(x, t, ehs, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(out, target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        times.append(round(time.time() - t0, 2))
    print(json.dumps({
        "mode": a.mode, "family": a.family, "latent": a.latent, "rank": a.rank if a.mode in ("lora", "hollowed") else None,
        "cut": a.cut if hollowed else None, "threads": a.threads, "torch": torch.__version__,
        "params_full": params_full, "params_removed": removed, "trainable": sum(p.numel() for p in trainable),
        "hollow_activation": list(h_shape) if h_shape else None,
        "peak_mib": round(status_kib("VmHWM") / 1024), "step_seconds": times,
    }))


if __name__ == "__main__":
    main()

# Reference point for the dit_s2_train workload: the same DiT-S/2 step in PyTorch (a compact
# re-implementation of facebookresearch/DiT models.py; attention via SDPA as timm does). Run with a
# CPU torch: `python bench/torch_dit_s2.py`. Not part of the test suite.
# DiT-S/2 (facebookresearch/DiT models.py structure; timm Attention uses SDPA) training step, batch 8, 32x32x4.
import math, time, torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(2)
D, H, depth, p, C, T = 384, 6, 12, 2, 4, 256
def modulate(x, shift, scale): return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
class Attn(nn.Module):
    def __init__(s): super().__init__(); s.qkv = nn.Linear(D, 3 * D); s.proj = nn.Linear(D, D)
    def forward(s, x):
        B, N, _ = x.shape
        q, k, v = s.qkv(x).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)
        return s.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))
class Block(nn.Module):
    def __init__(s):
        super().__init__()
        s.n1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6); s.attn = Attn()
        s.n2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        s.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(approximate="tanh"), nn.Linear(4 * D, D))
        s.ada = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
    def forward(s, x, c):
        a, b, g, d2, e, f = s.ada(c).chunk(6, dim=1)
        x = x + g.unsqueeze(1) * s.attn(modulate(s.n1(x), a, b))
        return x + f.unsqueeze(1) * s.mlp(modulate(s.n2(x), d2, e))
class DiT(nn.Module):
    def __init__(s):
        super().__init__()
        s.x_emb = nn.Conv2d(C, D, p, p); s.t_emb = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))
        s.y_emb = nn.Embedding(1001, D); s.pos = nn.Parameter(torch.zeros(1, T, D), requires_grad=False)
        s.blocks = nn.ModuleList([Block() for _ in range(depth)])
        s.fn = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6); s.fl = nn.Linear(D, p * p * 2 * C)
        s.fada = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
    def forward(s, x, t, y):
        x = s.x_emb(x).flatten(2).transpose(1, 2) + s.pos
        half = 128; fr = torch.exp(-math.log(10000) * torch.arange(half) / half)
        a = t[:, None].float() * fr[None]; c = s.t_emb(torch.cat([torch.cos(a), torch.sin(a)], -1)) + s.y_emb(y)
        for b in s.blocks: x = b(x, c)
        sh, sc = s.fada(c).chunk(2, dim=1)
        return s.fl(modulate(s.fn(x), sh, sc))
m = DiT(); opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0)
print("params", sum(q.numel() for q in m.parameters()))
x = torch.randn(8, C, 32, 32); y = torch.arange(8); 
ts = []
for i in range(6):
    t0 = time.perf_counter()
    t = torch.randint(0, 1000, (8,)); noise = torch.randn_like(x)
    out = m(x + noise, t, y)  # the loss below stands in for DiT's MSE + vb terms (same backward graph size)
    loss = (out[..., :16] - noise.flatten(2).transpose(1,2).reshape(8, 256, 16)).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    ts.append(time.perf_counter() - t0); print(i, round(ts[-1], 3))
print("median of steps 1..", sorted(ts[1:])[len(ts[1:]) // 2])

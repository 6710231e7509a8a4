"""Throwaway prototype for issue 13's untried levers (README.md beside it): the wavenet-tuned model
and recipe in one file of plain JAX/optax, plus gated tanh-sigmoid units (van den Oord et al. 2016,
"WaveNet", eq. 2), EMAs of the weights and BatchNorm running stats, embedding dropout and label
smoothing. Not the project's code: its batches and dropout masks come from jax.random, not
shared.stream, so only its own runs compare with each other. Writes one JSON (--out) with the
arguments, parameter count, seconds, final train/val (live and EMA) and a 20,000-step log.
"""
import argparse, json, time, sys, os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
import numpy as np, jax, jax.numpy as jnp, optax
from shared.config import ADAM_BETAS, ADAM_EPS, PRESET_RECIPES
from shared.data import load_dataset
from shared.spec import BatchNormSpec

R = PRESET_RECIPES["wavenet-tuned"]   # the defaults are the preset's recipe, read from the project
BN = BatchNormSpec()                  # the 'lecture' convention's eps and momentum

p = argparse.ArgumentParser()
p.add_argument("--variant", default="base")  # base | gated
p.add_argument("--H", type=int, default=128)
p.add_argument("--E", type=int, default=24)
p.add_argument("--steps", type=int, default=R["steps"])
p.add_argument("--batch", type=int, default=R["batch_size"])
p.add_argument("--seed", type=int, default=42)
p.add_argument("--lr", type=float, default=R["lr"])
p.add_argument("--lr-final", type=float, default=R["lr_final"])
p.add_argument("--warmup", type=int, default=R["warmup"])
p.add_argument("--wd", type=float, default=R["weight_decay"])
p.add_argument("--dropout", type=float, default=R["dropout"])
p.add_argument("--emb-dropout", type=float, default=0.0)
p.add_argument("--residual", action="store_true")
p.add_argument("--ls", type=float, default=0.0)
p.add_argument("--ema", default="0.999,0.9995,0.9999")
p.add_argument("--out", required=True)
a = p.parse_args()

d = load_dataset(8, os.environ.get("MAKEMORE_DATA"))
Xtr, Ytr = map(jnp.asarray, d.train); Xva, Yva = map(jnp.asarray, d.val)   # never the test split
V, E, H = d.vocab.vocab_size, a.E, a.H
G = 2 if a.variant == "gated" else 1
rng = np.random.default_rng(a.seed)
params, bufs = {"emb": rng.standard_normal((V, E))}, {}
fan = 2 * E
for k in range(3):
    params[f"W{k}"] = rng.standard_normal((fan, G * H)) / fan ** 0.5
    params[f"g{k}"] = np.ones(G * H); params[f"b{k}"] = np.zeros(G * H)
    bufs[f"rm{k}"] = np.zeros(G * H); bufs[f"rv{k}"] = np.ones(G * H)
    fan = 2 * H
params["Wo"] = rng.standard_normal((H, V)) / H ** 0.5 * 0.1; params["bo"] = np.zeros(V)
params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
bufs = {k: jnp.asarray(v, jnp.float32) for k, v in bufs.items()}
nparams = sum(v.size for v in params.values())
print("params", nparams, flush=True)

def forward(params, bufs, X, train, key=None):
    x = params["emb"][X]  # (B, 8, E)
    newb = {}
    if train and a.emb_dropout:
        key, sk = jax.random.split(key)
        x = x * jax.random.bernoulli(sk, 1 - a.emb_dropout, x.shape) / (1 - a.emb_dropout)
    for k in range(3):
        B, T, C = x.shape
        x = x.reshape(B, T // 2, 2 * C)
        inp = x
        h = x @ params[f"W{k}"]
        if h.shape[1] == 1: h = h[:, 0]; inp = inp[:, 0]
        axes = tuple(range(h.ndim - 1))
        if train:
            n = np.prod([h.shape[i] for i in axes])
            m = h.mean(axes); v = ((h - m) ** 2).sum(axes) / (n - 1)
            newb[f"rm{k}"] = (1 - BN.momentum) * bufs[f"rm{k}"] + BN.momentum * jax.lax.stop_gradient(m)
            newb[f"rv{k}"] = (1 - BN.momentum) * bufs[f"rv{k}"] + BN.momentum * jax.lax.stop_gradient(v)
        else:
            m, v = bufs[f"rm{k}"], bufs[f"rv{k}"]
        h = params[f"g{k}"] * (h - m) / jnp.sqrt(v + BN.eps) + params[f"b{k}"]
        if G == 2:
            h = jnp.tanh(h[..., :H]) * jax.nn.sigmoid(h[..., H:])
        else:
            h = jnp.tanh(h)
        if a.residual and k > 0:
            h = h + 0.5 * (inp[..., :H] + inp[..., H:])
        if train and a.dropout:
            key, sk = jax.random.split(key)
            h = h * jax.random.bernoulli(sk, 1 - a.dropout, h.shape) / (1 - a.dropout)
        x = h
    logits = x @ params["Wo"] + params["bo"]
    return logits, newb

def xent(logits, Y, ls=0.0):
    lp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(lp, Y[:, None], 1)[:, 0]
    if ls:
        nll = (1 - ls) * nll - ls * lp.mean(-1)
    return nll.mean()

sched = optax.warmup_cosine_decay_schedule(0.0, a.lr, a.warmup, a.steps, a.lr_final)
mask = {k: k.startswith("W") or k == "emb" for k in params}
tx = optax.adamw(sched, b1=ADAM_BETAS[0], b2=ADAM_BETAS[1], eps=ADAM_EPS, weight_decay=a.wd, mask=mask)
opt = tx.init(params)
decays = [float(x) for x in a.ema.split(",")] if a.ema else []
emas = [(params, bufs) for _ in decays]

def step(carry, key):
    params, bufs, opt, emas = carry
    k1, k2 = jax.random.split(key)
    ix = jax.random.randint(k1, (a.batch,), 0, Xtr.shape[0])
    X, Y = Xtr[ix], Ytr[ix]
    def lossf(p):
        lg, nb = forward(p, bufs, X, True, k2)
        return xent(lg, Y, a.ls), nb
    (loss, nb), g = jax.value_and_grad(lossf, has_aux=True)(params)
    upd, opt = tx.update(g, opt, params)
    params = optax.apply_updates(params, upd)
    emas = [(jax.tree.map(lambda e, q: dd * e + (1 - dd) * q, ep, params),
             jax.tree.map(lambda e, q: dd * e + (1 - dd) * q, eb, nb)) for dd, (ep, eb) in zip(decays, emas)]
    return (params, nb, opt, emas), loss

@jax.jit
def chunk(carry, keys):
    return jax.lax.scan(step, carry, keys)

@jax.jit
def evalf(params, bufs, X, Y):
    return xent(forward(params, bufs, X, False)[0], Y)

carry = (params, bufs, opt, emas)
key = jax.random.PRNGKey(a.seed)
CH = 2000
t0 = time.time(); log = []
for s in range(0, a.steps, CH):
    key, sk = jax.random.split(key)
    carry, losses = chunk(carry, jax.random.split(sk, CH))
    if (s + CH) % 20000 == 0:
        va = float(evalf(carry[0], carry[1], Xva, Yva))
        ev = [float(evalf(ep, eb, Xva, Yva)) for ep, eb in carry[3]]
        tr = float(losses.mean())
        log.append((s + CH, tr, va, ev))
        print(s + CH, f"{time.time()-t0:.0f}s", f"train~{tr:.4f} val {va:.4f} ema {['%.4f' % e for e in ev]}", flush=True)
params, bufs, _, emas = carry
res = {"args": vars(a), "params": int(nparams), "seconds": time.time() - t0,
       "train": float(evalf(params, bufs, Xtr, Ytr)), "val": float(evalf(params, bufs, Xva, Yva)),
       "ema_val": {str(dd): float(evalf(ep, eb, Xva, Yva)) for dd, (ep, eb) in zip(decays, emas)}, "log": log}
print(json.dumps({k: v for k, v in res.items() if k != "log"}), flush=True)
json.dump(res, open(a.out, "w"), indent=1)

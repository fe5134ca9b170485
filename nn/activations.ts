/**
 * @file Activations and dropout, as plain differentiable functions of
 * tensors. Constants are JS numbers, so they adopt the input's dtype.
 */
import { DifflabError, DTypeError } from "../tensor/errors.ts";
import { isFloat } from "../tensor/dtype.ts";
import * as ops from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import type { Key } from "../tensor/random.ts";
import { Tensor } from "../tensor/tensor.ts";

function checkFloat(op: string, x: unknown): Tensor {
  if (!(x instanceof Tensor)) throw new DifflabError(`${op}: argument x must be a Tensor, got ${typeof x}`);
  if (!isFloat(x.dtype)) throw new DTypeError(`${op}: needs a floating-point tensor, got ${x.dtype}`);
  return x;
}

/** Logistic sigmoid 1/(1+e^-x). */
export function sigmoid(x: Tensor): Tensor {
  return ops.sigmoid(checkFloat("sigmoid", x));
}

/** SiLU (swish): x·sigmoid(x), as torch.nn.SiLU. */
export function silu(x: Tensor): Tensor {
  return ops.mul(checkFloat("silu", x), ops.sigmoid(x));
}

/** ReLU: max(x, 0). */
export function relu(x: Tensor): Tensor {
  return ops.maximum(checkFloat("relu", x), 0);
}

/** Exact (erf) GELU: x·Φ(x) = 0.5·x·(1 + erf(x/√2)), as torch's `F.gelu` default. */
export function gelu(x: Tensor): Tensor {
  return ops.gelu(checkFloat("gelu", x));
}

/** Tanh GELU: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), as `GELU(approximate="tanh")` (DiT's MLP). */
export function geluTanh(x: Tensor): Tensor {
  return ops.geluTanh(checkFloat("geluTanh", x));
}

/** Names of the activations an MLP can use. */
export type Activation = "gelu" | "gelu_tanh" | "silu" | "relu" | "sigmoid" | "identity";

/** Applies an activation by name. */
export function activate(x: Tensor, act: Activation): Tensor {
  switch (act) {
    case "gelu":
      return gelu(x);
    case "gelu_tanh":
      return geluTanh(x);
    case "silu":
      return silu(x);
    case "relu":
      return relu(x);
    case "sigmoid":
      return sigmoid(x);
    case "identity":
      return x;
    default:
      throw new DifflabError(`activate: unknown activation "${act}" (gelu, gelu_tanh, silu, relu, sigmoid, identity)`);
  }
}

/**
 * Inverted dropout: zeroes each element with probability `p` and scales the
 * rest by 1/(1-p). Without a key (evaluation) or with p = 0 it is the identity.
 */
export function dropout(x: Tensor, p: number, key?: Key): Tensor {
  checkFloat("dropout", x);
  if (!(p >= 0 && p <= 1)) throw new DifflabError(`dropout: probability p must be in [0, 1], got ${p}`);
  if (key === undefined || p === 0) return x;
  if (p === 1) return ops.mul(x, 0);
  const keepMask = random.bernoulli(key, ops.scalar(1 - p, x.dtype, x), x.shape);
  return ops.where(keepMask, ops.mul(x, 1 / (1 - p)), 0);
}

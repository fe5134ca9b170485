/**
 * @file Space/channel rearrangements: torch's PixelShuffle/PixelUnshuffle
 * (NCHW, channel index `c·r² + i·r + j`), DiMR's channel-last variant
 * (channel index `(i·r + j)·C + c`), and DiT's patchify/unpatchify (tokens in
 * row-major order, per-token vector laid out `(p_row, p_col, channel)`).
 * All are reshape/transpose views, so they are exact and differentiable.
 */
import { DifflabError, fmtShape, ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import { Tensor } from "../tensor/tensor.ts";

function check(op: string, x: unknown, rank: number, r: number): Tensor {
  if (!(x instanceof Tensor) || x.ndim !== rank) {
    throw new ShapeError(
      `${op}: x must be a rank-${rank} Tensor, got ${x instanceof Tensor ? fmtShape(x.shape) : typeof x}`,
    );
  }
  if (!Number.isInteger(r) || r < 1) throw new DifflabError(`${op}: factor must be a positive integer, got ${r}`);
  return x;
}

/** `nn.PixelShuffle(r)`: `[N, C·r², H, W]` to `[N, C, H·r, W·r]`. */
export function pixelShuffle(x: Tensor, r: number): Tensor {
  const [N, Cr, H, W] = check("pixelShuffle", x, 4, r).shape;
  if (Cr % (r * r)) {
    throw new ShapeError(`pixelShuffle: ${Cr} channels of ${fmtShape(x.shape)} do not divide by r²=${r * r}`);
  }
  const C = Cr / (r * r);
  const t = ops.transpose(ops.reshape(x, [N, C, r, r, H, W]), [0, 1, 4, 2, 5, 3]);
  return ops.reshape(t, [N, C, H * r, W * r]);
}

/** `nn.PixelUnshuffle(r)`: `[N, C, H·r, W·r]` to `[N, C·r², H, W]` (the inverse of pixelShuffle). */
export function pixelUnshuffle(x: Tensor, r: number): Tensor {
  const [N, C, Hr, Wr] = check("pixelUnshuffle", x, 4, r).shape;
  if (Hr % r || Wr % r) {
    throw new ShapeError(`pixelUnshuffle: spatial size of ${fmtShape(x.shape)} does not divide by ${r}`);
  }
  const [H, W] = [Hr / r, Wr / r];
  const t = ops.transpose(ops.reshape(x, [N, C, H, r, W, r]), [0, 1, 3, 5, 2, 4]);
  return ops.reshape(t, [N, C * r * r, H, W]);
}

/** DiMR's channel-last pixel shuffle: `[B, H, W, r²·C]` to `[B, H·r, W·r, C]`, channel `(i·r + j)·C + c`. */
export function pixelShuffleChannelLast(x: Tensor, r: number): Tensor {
  const [B, H, W, Cr] = check("pixelShuffleChannelLast", x, 4, r).shape;
  if (Cr % (r * r)) {
    throw new ShapeError(
      `pixelShuffleChannelLast: ${Cr} channels of ${fmtShape(x.shape)} do not divide by r²=${r * r}`,
    );
  }
  const C = Cr / (r * r);
  const t = ops.transpose(ops.reshape(x, [B, H, W, r, r, C]), [0, 1, 3, 2, 4, 5]);
  return ops.reshape(t, [B, H * r, W * r, C]);
}

/** Inverse of {@link pixelShuffleChannelLast}: `[B, H·r, W·r, C]` to `[B, H, W, r²·C]`. */
export function pixelUnshuffleChannelLast(x: Tensor, r: number): Tensor {
  const [B, Hr, Wr, C] = check("pixelUnshuffleChannelLast", x, 4, r).shape;
  if (Hr % r || Wr % r) {
    throw new ShapeError(`pixelUnshuffleChannelLast: spatial size of ${fmtShape(x.shape)} does not divide by ${r}`);
  }
  const [H, W] = [Hr / r, Wr / r];
  const t = ops.transpose(ops.reshape(x, [B, H, r, W, r, C]), [0, 1, 3, 2, 4, 5]);
  return ops.reshape(t, [B, H, W, r * r * C]);
}

/**
 * Image to tokens: `[N, C, H, W]` to `[N, (H/p)·(W/p), p·p·C]`, tokens
 * row-major, each token laid out `(p_row, p_col, c)` with c fastest - the
 * exact inverse of DiT's `unpatchify`.
 */
export function patchify(x: Tensor, p: number): Tensor {
  const [N, C, H, W] = check("patchify", x, 4, p).shape;
  if (H % p || W % p) {
    throw new ShapeError(`patchify: spatial size of ${fmtShape(x.shape)} does not divide by patch ${p}`);
  }
  const [h, w] = [H / p, W / p];
  const t = ops.transpose(ops.reshape(x, [N, C, h, p, w, p]), [0, 2, 4, 3, 5, 1]);
  return ops.reshape(t, [N, h * w, p * p * C]);
}

/**
 * DiT's `unpatchify`: `[N, T, p·p·C]` to `[N, C, h·p, w·p]` via
 * `einsum('nhwpqc->nchpwq')`; the grid is square (h = w = √T) unless given.
 */
export function unpatchify(x: Tensor, p: number, channels: number, grid?: readonly [number, number]): Tensor {
  const [N, T, D] = check("unpatchify", x, 3, p).shape;
  const [h, w] = grid ?? [Math.round(Math.sqrt(T)), Math.round(Math.sqrt(T))];
  if (h * w !== T) throw new ShapeError(`unpatchify: ${T} tokens do not form a ${h}x${w} grid`);
  if (D !== p * p * channels) {
    throw new ShapeError(`unpatchify: token width ${D} of ${fmtShape(x.shape)} is not p·p·C = ${p}·${p}·${channels}`);
  }
  const t = ops.transpose(ops.reshape(x, [N, h, w, p, p, channels]), [0, 5, 1, 3, 2, 4]);
  return ops.reshape(t, [N, channels, h * p, w * p]);
}

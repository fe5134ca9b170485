/**
 * @file Fréchet distance between two sets of feature vectors, in f64 on the host:
 * FD = |μ1 - μ2|² + tr(Σ1 + Σ2 - 2 (Σ1^½ Σ2 Σ1^½)^½), the FID formula applied to
 * whatever features are given. Both matrix square roots come from symmetric
 * eigendecompositions (Householder tridiagonalisation + implicit QL, as EISPACK's
 * tred2/tql2), so no general non-symmetric sqrtm is needed and tiny negative
 * eigenvalues from rounding are clipped to zero.
 */
import { DifflabError, ShapeError } from "../tensor/errors.ts";

/** Feature vectors: an array of rows, or a row-major `[n, d]` matrix. */
export type Features = readonly ArrayLike<number>[] | { data: ArrayLike<number>; n: number; d: number };

/** Mean and covariance of a feature set. */
export interface GaussianStats {
  /** Feature dimension. */
  d: number;
  /** Number of vectors the statistics came from. */
  n: number;
  /** Mean, length d. */
  mu: Float64Array;
  /** Covariance (unbiased, divided by n - 1), row-major d×d. */
  sigma: Float64Array;
}

function asMatrix(op: string, f: Features): { data: ArrayLike<number>; n: number; d: number } {
  if (Array.isArray(f)) {
    const rows = f as readonly ArrayLike<number>[];
    if (rows.length === 0) throw new ShapeError(`${op}: no feature vectors`);
    const d = rows[0].length;
    const data = new Float64Array(rows.length * d);
    rows.forEach((r, i) => {
      if (r.length !== d) throw new ShapeError(`${op}: row ${i} has ${r.length} features, row 0 has ${d}`);
      data.set(r, i * d);
    });
    return { data, n: rows.length, d };
  }
  const m = f as { data: ArrayLike<number>; n: number; d: number };
  if (!m || !Number.isInteger(m.n) || !Number.isInteger(m.d) || m.d < 1 || m.data?.length !== m.n * m.d) {
    throw new ShapeError(`${op}: expected rows or {data, n, d} with data.length = n·d`);
  }
  return m;
}

/** Mean and unbiased covariance of the features (needs at least two vectors, all finite). */
export function gaussianStats(features: Features): GaussianStats {
  const { data, n, d } = asMatrix("gaussianStats", features);
  if (n < 2) throw new ShapeError(`gaussianStats: need at least 2 feature vectors for a covariance, got ${n}`);
  const mu = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) {
      const v = data[i * d + j];
      if (!Number.isFinite(v)) throw new DifflabError(`gaussianStats: feature ${j} of vector ${i} is ${v}`);
      mu[j] += v;
    }
  }
  for (let j = 0; j < d; j++) mu[j] /= n;
  const sigma = new Float64Array(d * d);
  const c = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) c[j] = data[i * d + j] - mu[j];
    for (let a = 0; a < d; a++) {
      const ca = c[a];
      if (ca === 0) continue;
      for (let b = a; b < d; b++) sigma[a * d + b] += ca * c[b];
    }
  }
  for (let a = 0; a < d; a++) {
    for (let b = a; b < d; b++) {
      const v = sigma[a * d + b] / (n - 1);
      sigma[a * d + b] = v;
      sigma[b * d + a] = v;
    }
  }
  return { d, n, mu, sigma };
}

/**
 * Eigendecomposition of a symmetric `n×n` matrix (row-major; only symmetry is assumed,
 * the input is not modified): ascending eigenvalues and orthonormal eigenvectors as the
 * columns of a row-major matrix.
 */
export function symmetricEigen(a: ArrayLike<number>, n: number): { values: Float64Array; vectors: Float64Array } {
  if (!Number.isInteger(n) || n < 1 || a.length !== n * n) {
    throw new ShapeError(`symmetricEigen: expected an n×n matrix with n >= 1, got ${a.length} values for n=${n}`);
  }
  for (let i = 0; i < n * n; i++) {
    if (!Number.isFinite(a[i])) throw new DifflabError(`symmetricEigen: entry ${i} is ${a[i]}`);
  }
  const V: Float64Array[] = Array.from(
    { length: n },
    (_, i) => Float64Array.from({ length: n }, (_, j) => a[i * n + j]),
  );
  const d = new Float64Array(n), e = new Float64Array(n);
  tred2(V, d, e, n);
  tql2(V, d, e, n);
  const order = [...d.keys()].sort((x, y) => d[x] - d[y]);
  const values = new Float64Array(n), vectors = new Float64Array(n * n);
  order.forEach((src, k) => {
    values[k] = d[src];
    for (let i = 0; i < n; i++) vectors[i * n + k] = V[i][src];
  });
  return { values, vectors };
}

// Householder reduction to tridiagonal form (EISPACK tred2, via JAMA): on exit d is the
// diagonal, e the sub-diagonal (e[0] = 0) and V the accumulated orthogonal transform.
function tred2(V: Float64Array[], d: Float64Array, e: Float64Array, n: number) {
  for (let j = 0; j < n; j++) d[j] = V[n - 1][j];
  for (let i = n - 1; i > 0; i--) {
    let scale = 0, h = 0;
    for (let k = 0; k < i; k++) scale += Math.abs(d[k]);
    if (scale === 0) {
      e[i] = d[i - 1];
      for (let j = 0; j < i; j++) {
        d[j] = V[i - 1][j];
        V[i][j] = 0;
        V[j][i] = 0;
      }
    } else {
      for (let k = 0; k < i; k++) {
        d[k] /= scale;
        h += d[k] * d[k];
      }
      let f = d[i - 1];
      let g = Math.sqrt(h);
      if (f > 0) g = -g;
      e[i] = scale * g;
      h -= f * g;
      d[i - 1] = f - g;
      for (let j = 0; j < i; j++) e[j] = 0;
      for (let j = 0; j < i; j++) {
        f = d[j];
        V[j][i] = f;
        g = e[j] + V[j][j] * f;
        for (let k = j + 1; k <= i - 1; k++) {
          g += V[k][j] * d[k];
          e[k] += V[k][j] * f;
        }
        e[j] = g;
      }
      f = 0;
      for (let j = 0; j < i; j++) {
        e[j] /= h;
        f += e[j] * d[j];
      }
      const hh = f / (h + h);
      for (let j = 0; j < i; j++) e[j] -= hh * d[j];
      for (let j = 0; j < i; j++) {
        f = d[j];
        g = e[j];
        for (let k = j; k <= i - 1; k++) V[k][j] -= f * e[k] + g * d[k];
        d[j] = V[i - 1][j];
        V[i][j] = 0;
      }
    }
    d[i] = h;
  }
  for (let i = 0; i < n - 1; i++) {
    V[n - 1][i] = V[i][i];
    V[i][i] = 1;
    const h = d[i + 1];
    if (h !== 0) {
      for (let k = 0; k <= i; k++) d[k] = V[k][i + 1] / h;
      for (let j = 0; j <= i; j++) {
        let g = 0;
        for (let k = 0; k <= i; k++) g += V[k][i + 1] * V[k][j];
        for (let k = 0; k <= i; k++) V[k][j] -= g * d[k];
      }
    }
    for (let k = 0; k <= i; k++) V[k][i + 1] = 0;
  }
  for (let j = 0; j < n; j++) {
    d[j] = V[n - 1][j];
    V[n - 1][j] = 0;
  }
  V[n - 1][n - 1] = 1;
  e[0] = 0;
}

// Implicit-shift QL on the tridiagonal matrix (EISPACK tql2, via JAMA), accumulating into V.
function tql2(V: Float64Array[], d: Float64Array, e: Float64Array, n: number) {
  for (let i = 1; i < n; i++) e[i - 1] = e[i];
  e[n - 1] = 0;
  let f = 0, tst1 = 0;
  const eps = 2 ** -52;
  for (let l = 0; l < n; l++) {
    tst1 = Math.max(tst1, Math.abs(d[l]) + Math.abs(e[l]));
    let m = l;
    while (m < n && Math.abs(e[m]) > eps * tst1) m++;
    if (m > l) {
      let iter = 0;
      do {
        // Convergence is normally reached in 1-3 iterations; the cap only guards against NaN-like inputs.
        if (++iter > 100) throw new DifflabError(`symmetricEigen: QL iteration did not converge`);
        let g = d[l];
        let p = (d[l + 1] - g) / (2 * e[l]);
        let r = Math.hypot(p, 1);
        if (p < 0) r = -r;
        d[l] = e[l] / (p + r);
        d[l + 1] = e[l] * (p + r);
        const dl1 = d[l + 1];
        let h = g - d[l];
        for (let i = l + 2; i < n; i++) d[i] -= h;
        f += h;
        p = d[m];
        let c = 1, c2 = c, c3 = c, s = 0, s2 = 0;
        const el1 = e[l + 1];
        for (let i = m - 1; i >= l; i--) {
          c3 = c2;
          c2 = c;
          s2 = s;
          g = c * e[i];
          h = c * p;
          r = Math.hypot(p, e[i]);
          e[i + 1] = s * r;
          s = e[i] / r;
          c = p / r;
          p = c * d[i] - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]);
          for (let k = 0; k < n; k++) {
            h = V[k][i + 1];
            V[k][i + 1] = s * V[k][i] + c * h;
            V[k][i] = c * V[k][i] - s * h;
          }
        }
        p = (-s * s2 * c3 * el1 * e[l]) / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (Math.abs(e[l]) > eps * tst1);
    }
    d[l] += f;
    e[l] = 0;
  }
}

/** Square root of a symmetric positive semi-definite matrix (negative eigenvalues from rounding clip to 0). */
export function sqrtPsd(a: ArrayLike<number>, n: number): Float64Array {
  const { values, vectors: v } = symmetricEigen(a, n);
  const s = values.map((x) => Math.sqrt(Math.max(x, 0)));
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = i; j < n; j++) {
      let acc = 0;
      for (let k = 0; k < n; k++) acc += v[i * n + k] * s[k] * v[j * n + k];
      out[i * n + j] = acc;
      out[j * n + i] = acc;
    }
  }
  return out;
}

function matmulSq(a: Float64Array, b: Float64Array, n: number): Float64Array {
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < n; k++) {
      const aik = a[i * n + k];
      if (aik === 0) continue;
      for (let j = 0; j < n; j++) out[i * n + j] += aik * b[k * n + j];
    }
  }
  return out;
}

/** Fréchet distance between two Gaussians given by their statistics. */
export function frechetDistanceStats(a: GaussianStats, b: GaussianStats): number {
  if (a.d !== b.d) throw new ShapeError(`frechetDistance: feature dimensions differ (${a.d} and ${b.d})`);
  const n = a.d;
  let meanTerm = 0, trace = 0;
  for (let i = 0; i < n; i++) {
    meanTerm += (a.mu[i] - b.mu[i]) ** 2;
    trace += a.sigma[i * n + i] + b.sigma[i * n + i];
  }
  const s1h = sqrtPsd(a.sigma, n);
  const m = matmulSq(matmulSq(s1h, b.sigma, n), s1h, n);
  // M is symmetric in exact arithmetic; symmetrise so the eigen-solver sees exactly that.
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      const v = (m[i * n + j] + m[j * n + i]) / 2;
      m[i * n + j] = v;
      m[j * n + i] = v;
    }
  }
  const { values } = symmetricEigen(m, n);
  let trSqrt = 0;
  for (const v of values) trSqrt += Math.sqrt(Math.max(v, 0));
  // Rounding can push an exact zero slightly negative; a distance is never below zero.
  return Math.max(meanTerm + trace - 2 * trSqrt, 0);
}

/** Fréchet distance between two feature sets (rows or `{data, n, d}` matrices). */
export function frechetDistance(featsA: Features, featsB: Features): number {
  return frechetDistanceStats(gaussianStats(featsA), gaussianStats(featsB));
}

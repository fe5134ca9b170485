/**
 * @file f32 GEMM kernels (GotoBLAS-style): operands are packed into MR-row
 * panels of A and NR-column panels of B per KC block, and an MR×NR register
 * micro-kernel accumulates with f32x4 FMAs. Packing follows arbitrary element
 * strides, so transposed operands (and broadcast batch operands) cost no
 * copy. Convolutions reuse the same driver: their B operand is the implicit
 * im2col matrix of the input, packed straight from the (strided) input view
 * block by block inside each chunk, so no im2col matrix is ever materialised.
 */
import type { FuncDef, ValType } from "./emit.ts";
import { arg, KPARAMS, SCRATCH_STRIDE_LOG } from "./kernels.ts";
import { vmadd } from "./math.ts";

/** Rows of the register tile. */
export const MR = 6;
/** Columns of the register tile (a multiple of 4). */
export const NR = 8;
const NV = NR / 4;

/** Argument word indices of `gemm_compute`. */
export const G = {
  M: 0,
  N: 1,
  K: 2,
  KC: 3,
  Mp: 4,
  Np: 5,
  Ap: 6,
  Bp: 7,
  C: 8,
  ldc: 9,
  aMod: 10,
  bMod: 11,
  aBatch: 12,
  bBatch: 13,
  cBatch: 14,
  MC: 15,
  NC: 16,
  nMb: 17,
  nNb: 18,
  scr: 19,
  bMode: 20,
  beta: 21,
  // conv parameters (bMode 1)
  x: 22,
  sn: 23,
  sg: 24,
  sc: 25,
  sh: 26,
  sw: 27,
  H: 28,
  W: 29,
  KH: 30,
  KW: 31,
  OW: 32,
  strH: 33,
  strW: 34,
  padT: 35,
  padL: 36,
  dilH: 37,
  dilW: 38,
  rdH: 39,
  rdW: 40,
  G: 41,
  P: 42,
  fold: 43,
  // in-chunk packing of strided operands (aMode 1 / bMode 2): element strides of the sources
  aMode: 44,
  ars: 45,
  acs: 46,
  brs: 47,
  bcs: 48,
  COUNT: 49,
} as const;

/**
 * The register micro-kernel: C[rows×NR] (=|+=) A panel × B panel over kc, ldc in bytes. `rows` < MR
 * variants serve the last panel of M (the packed A panel keeps its MR stride).
 */
function microKernel(relaxed: boolean, rows = MR): FuncDef {
  const locals: [string, ValType][] = [["k", "i32"], ["av", "v128"]];
  for (let r = 0; r < rows; r++) for (let v = 0; v < NV; v++) locals.push([`c${r}_${v}`, "v128"]);
  for (let v = 0; v < NV; v++) locals.push([`b${v}`, "v128"]);
  let body = "";
  for (let r = 0; r < rows; r++) {
    for (let v = 0; v < NV; v++) body += `v128.const i32x4 0 0 0 0 local.set $c${r}_${v}\n`;
  }
  const step = (u: number) => {
    let s = "";
    for (let v = 0; v < NV; v++) s += `local.get $b v128.load offset=${(u * NV + v) * 16} local.set $b${v}\n`;
    for (let r = 0; r < rows; r++) {
      s += `local.get $a v128.load32_splat offset=${(u * MR + r) * 4} local.set $av\n`;
      for (let v = 0; v < NV; v++) {
        s += vmadd(relaxed, "local.get $av", `local.get $b${v}`, `local.get $c${r}_${v}`) + ` local.set $c${r}_${v}\n`;
      }
    }
    return s;
  };
  // Two k steps per iteration with a count-down loop: the fewest integer ops next to the FMAs
  // (measured best in V8; longer unrolls spill without gaining).
  body += `
    local.get $kc i32.const 1 i32.shr_u local.tee $k
    if
      loop $l2
        ${step(0)}${step(1)}
        local.get $a i32.const ${MR * 8} i32.add local.set $a
        local.get $b i32.const ${NR * 8} i32.add local.set $b
        local.get $k i32.const 1 i32.sub local.tee $k br_if $l2
      end
    end
    local.get $kc i32.const 1 i32.and
    if
      ${step(0)}
    end
    local.get $acc
    if\n`;
  for (let r = 0; r < rows; r++) {
    for (let v = 0; v < NV; v++) {
      body += `local.get $c local.get $c v128.load offset=${v * 16} local.get $c${r}_${v} f32x4.add v128.store offset=${
        v * 16
      }\n`;
    }
    body += "local.get $c local.get $ldc i32.add local.set $c\n";
  }
  body += "else\n";
  for (let r = 0; r < rows; r++) {
    for (let v = 0; v < NV; v++) body += `local.get $c local.get $c${r}_${v} v128.store offset=${v * 16}\n`;
    body += "local.get $c local.get $ldc i32.add local.set $c\n";
  }
  body += "end";
  return {
    name: rows === MR ? "gemm_mk" : `gemm_mk${rows}`,
    exported: false,
    params: [["a", "i32"], ["b", "i32"], ["c", "i32"], ["ldc", "i32"], ["kc", "i32"], ["acc", "i32"]],
    locals,
    body,
  };
}

const SH_LO = "0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23"; // a0 b0 a1 b1
const SH_HI = "8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31"; // a2 b2 a3 b3
const SH_L64 = "0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23"; // a0 a1 b0 b1
const SH_H64 = "8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31"; // a2 a3 b2 b3

/**
 * Transposes 4 consecutive k of R rows (pointers $q0..) into R-wide packed rows at $d (k-major),
 * 4 rows at a time with two shuffle stages, a final pair of rows with one; advances the pointers.
 */
function transpose4(R: number): string {
  let s = "";
  for (let r = 0; r < R; r++) s += `local.get $q${r} v128.load local.set $v${r}\n`;
  let r = 0;
  for (; r + 4 <= R; r += 4) {
    s += `local.get $v${r} local.get $v${r + 1} i8x16.shuffle ${SH_LO} local.set $t0
      local.get $v${r + 2} local.get $v${r + 3} i8x16.shuffle ${SH_LO} local.set $t1
      local.get $v${r} local.get $v${r + 1} i8x16.shuffle ${SH_HI} local.set $t2
      local.get $v${r + 2} local.get $v${r + 3} i8x16.shuffle ${SH_HI} local.set $t3
      local.get $d local.get $t0 local.get $t1 i8x16.shuffle ${SH_L64} v128.store offset=${4 * r}
      local.get $d local.get $t0 local.get $t1 i8x16.shuffle ${SH_H64} v128.store offset=${4 * r + 4 * R}
      local.get $d local.get $t2 local.get $t3 i8x16.shuffle ${SH_L64} v128.store offset=${4 * r + 8 * R}
      local.get $d local.get $t2 local.get $t3 i8x16.shuffle ${SH_H64} v128.store offset=${4 * r + 12 * R}\n`;
  }
  if (r + 2 <= R) {
    s += `local.get $v${r} local.get $v${r + 1} i8x16.shuffle ${SH_LO} local.set $t0
      local.get $v${r} local.get $v${r + 1} i8x16.shuffle ${SH_HI} local.set $t2
      local.get $d local.get $t0 v128.store64_lane offset=${4 * r} 0
      local.get $d local.get $t0 v128.store64_lane offset=${4 * r + 4 * R} 1
      local.get $d local.get $t2 v128.store64_lane offset=${4 * r + 8 * R} 0
      local.get $d local.get $t2 v128.store64_lane offset=${4 * r + 12 * R} 1\n`;
    r += 2;
  }
  if (r !== R) throw new Error("transpose4: R must be even");
  for (let q = 0; q < R; q++) s += `local.get $q${q} i32.const 16 i32.add local.set $q${q}\n`;
  return s;
}

/**
 * Packs one R-row panel (rows row0..row0+mr of a strided matrix at `base`, zero rows up to R) for
 * k0..k0+kc into `d`, k-major. Three paths: rows adjacent in memory (vector copies), rows contiguous
 * along k (4x4 transposes in registers), anything else (scalar).
 */
function panelPacker(R: number): FuncDef {
  const locals: [string, ValType][] = [["k", "i32"], ["csb", "i32"], ["r", "i32"]];
  for (let r = 0; r < R; r++) locals.push([`q${r}`, "i32"], [`v${r}`, "v128"]);
  locals.push(["t0", "v128"], ["t1", "v128"], ["t2", "v128"], ["t3", "v128"]);
  let body = `
    local.get $cs i32.const 2 i32.shl local.set $csb
    local.get $mr i32.const ${R} i32.eq
    if
      ;; full panel: one pointer per row, k outer
  `;
  for (let r = 0; r < R; r++) {
    body +=
      `local.get $base local.get $row0 i32.const ${r} i32.add local.get $rs i32.mul local.get $k0 local.get $cs i32.mul
      i32.add i32.const 2 i32.shl i32.add local.set $q${r}\n`;
  }
  body += `
      i32.const 0 local.set $k
      local.get $rs i32.const 1 i32.eq
      if
        ;; rows adjacent in memory: vector copies of R elements per k
        block $vd loop $vl
          local.get $k local.get $kc i32.ge_u br_if $vd
          ${vecCopy(R)}
          local.get $q0 local.get $csb i32.add local.set $q0
          local.get $d i32.const ${4 * R} i32.add local.set $d
          local.get $k i32.const 1 i32.add local.set $k
          br $vl
        end end
      else
        local.get $cs i32.const 1 i32.eq
        if
          ;; rows contiguous along k: 4 k at a time, transposed in registers
          block $td loop $tl
            local.get $k i32.const 4 i32.add local.get $kc i32.gt_u br_if $td
            ${transpose4(R)}
            local.get $d i32.const ${16 * R} i32.add local.set $d
            local.get $k i32.const 4 i32.add local.set $k
            br $tl
          end end
        end
      end
      block $kd loop $kl
        local.get $k local.get $kc i32.ge_u br_if $kd
  `;
  for (let r = 0; r < R; r++) {
    body += `local.get $d local.get $q${r} f32.load f32.store offset=${4 * r}
         local.get $q${r} local.get $csb i32.add local.set $q${r}\n`;
  }
  body += `
        local.get $d i32.const ${4 * R} i32.add local.set $d
        local.get $k i32.const 1 i32.add local.set $k
        br $kl
      end end
    else
      ;; partial panel: zero padding rows
      i32.const 0 local.set $k
      block $kd2 loop $kl2
        local.get $k local.get $kc i32.ge_u br_if $kd2
        i32.const 0 local.set $r
        block $rd loop $rl
          local.get $r i32.const ${R} i32.ge_u br_if $rd
          local.get $d local.get $r i32.const 2 i32.shl i32.add
          local.get $r local.get $mr i32.lt_s
          if :f32
            local.get $base local.get $row0 local.get $r i32.add local.get $rs i32.mul
            local.get $k0 local.get $k i32.add local.get $cs i32.mul i32.add i32.const 2 i32.shl i32.add f32.load
          else
            f32.const 0
          end
          f32.store
          local.get $r i32.const 1 i32.add local.set $r
          br $rl
        end end
        local.get $d i32.const ${4 * R} i32.add local.set $d
        local.get $k i32.const 1 i32.add local.set $k
        br $kl2
      end end
    end`;
  return {
    name: `gemm_ppanel${R}`,
    exported: false,
    params: [["base", "i32"], ["rs", "i32"], ["cs", "i32"], ["row0", "i32"], ["mr", "i32"], ["k0", "i32"], [
      "kc",
      "i32",
    ], [
      "d",
      "i32",
    ]],
    locals,
    body,
  };
}

/**
 * Packs A (rows × k, element strides rs/cs) into R-row panels per KC block, chunked over panels.
 * args: src, rs, cs, M, K, KC, dst, Mp, npanels, ppc (panels per chunk), nPc (panel chunks per batch),
 * bstride (source elements per batch), dstBatch (packed elements per batch).
 * With R = NR and B's strides swapped it packs B (its "rows" are B's columns).
 */
function packKernel(name: string, R: number): FuncDef {
  const names = ["src", "rs", "cs", "M", "K", "KC", "dst", "Mp", "np", "ppc", "npc", "bstride", "dstBatch"];
  const locals: [string, ValType][] = names.map((n) => [n, "i32"]);
  for (const n of ["b", "p", "p1", "row0", "mr", "k0", "kc", "d", "base"]) locals.push([n, "i32"]);
  let body = names.map((n, i) => arg(n, i)).join("");
  body += `
    local.get $chunk local.get $npc i32.div_u local.set $b
    local.get $chunk local.get $npc i32.rem_u local.get $ppc i32.mul local.tee $p local.get $ppc i32.add local.tee $p1
    local.get $np local.get $p1 local.get $np i32.lt_u select local.set $p1
    local.get $src local.get $b local.get $bstride i32.mul i32.const 2 i32.shl i32.add local.set $base
    block $pd loop $pl
      local.get $p local.get $p1 i32.ge_u br_if $pd
      local.get $p i32.const ${R} i32.mul local.set $row0
      local.get $M local.get $row0 i32.sub local.tee $mr i32.const ${R} local.get $mr i32.const ${R} i32.lt_s select local.set $mr
      i32.const 0 local.set $k0
      block $kbd loop $kbl
        local.get $k0 local.get $K i32.ge_u br_if $kbd
        local.get $K local.get $k0 i32.sub local.tee $kc local.get $KC local.get $kc local.get $KC i32.lt_u select local.set $kc
        local.get $base local.get $rs local.get $cs local.get $row0 local.get $mr local.get $k0 local.get $kc
        local.get $dst local.get $b local.get $dstBatch i32.mul local.get $k0 local.get $Mp i32.mul i32.add
        local.get $row0 local.get $kc i32.mul i32.add i32.const 2 i32.shl i32.add
        call $gemm_ppanel${R}
        local.get $k0 local.get $KC i32.add local.set $k0
        br $kbl
      end end
      local.get $p i32.const 1 i32.add local.set $p
      br $pl
    end end`;
  return { name, params: KPARAMS, locals, body };
}

/** Copies R consecutive f32 from `$q0` to `$d` (v128 / i64 / f32 pieces). */
function vecCopy(R: number): string {
  let s = "";
  let o = 0;
  while (R - o >= 4) {
    s += `local.get $d local.get $q0 v128.load offset=${4 * o} v128.store offset=${4 * o}\n`;
    o += 4;
  }
  if (R - o >= 2) {
    s += `local.get $d local.get $q0 i64.load offset=${4 * o} i64.store offset=${4 * o}\n`;
    o += 2;
  }
  if (R - o >= 1) s += `local.get $d local.get $q0 f32.load offset=${4 * o} f32.store offset=${4 * o}\n`;
  return s;
}

/** One column of the "transposed" packing mode: 4 consecutive k (kx..kx+3) of column c. */
function tcol(c: number): string {
  const st = (val: string, j: number) => `local.get $dst ${val} f32.store offset=${4 * c + j * NR * 4}`;
  return `
        local.get $ok${c}
        if
          local.get $oy${c} local.get $ky local.get $rdH i32.mul i32.add local.set $py
          local.get $ox${c} local.get $kx i32.add local.set $px
          local.get $py local.get $H i32.lt_u
          if
            local.get $x local.get $base${c} local.get $coff i32.add local.get $py local.get $sh i32.mul i32.add
            local.get $px i32.add i32.const 2 i32.shl i32.add local.set $addr
            ;; windows wholly outside the row read nothing; partial ones read at most 12 bytes beyond it
            local.get $px i32.const -4 i32.le_s local.get $px local.get $W i32.ge_s i32.or
            if :v128
              v128.const i32x4 0 0 0 0
            else
              local.get $addr v128.load
              local.get $px i32x4.splat v128.const i32x4 0 1 2 3 i32x4.add local.get $W i32x4.splat i32x4.lt_u v128.and
            end
            local.set $vv
            ${
    [0, 1, 2, 3].map((j) => `local.get $dst local.get $vv v128.store32_lane offset=${4 * c + j * NR * 4} ${j}`).join(
      " ",
    )
  }
          else
            ${[0, 1, 2, 3].map((j) => st("f32.const 0", j)).join(" ")}
          end
        else
          ${[0, 1, 2, 3].map((j) => st("f32.const 0", j)).join(" ")}
        end`;
}

/**
 * Packs NR columns of the implicit im2col matrix of a convolution input into `dst` for rows k0..k0+kc.
 * Params: args (conv parameters), dst, j0 (first column), ncols (columns in the matrix), k0, kc, bt.
 */
function packConv(): FuncDef {
  const cp = [
    "x",
    "sn",
    "sg",
    "sc",
    "sh",
    "sw",
    "H",
    "W",
    "KH",
    "KW",
    "OW",
    "strH",
    "strW",
    "padT",
    "padL",
    "dilH",
    "dilW",
    "rdH",
    "rdW",
    "G",
    "P",
    "fold",
  ] as const;
  const locals: [string, ValType][] = cp.map((n) => [n, "i32"]);
  locals.push(
    ["n", "i32"],
    ["g", "i32"],
    ["j", "i32"],
    ["pp", "i32"],
    ["k", "i32"],
    ["k1", "i32"],
    ["ci", "i32"],
    ["ky", "i32"],
    ["kx", "i32"],
    ["coff", "i32"],
    ["py", "i32"],
    ["px", "i32"],
    ["iy", "i32"],
    ["ix", "i32"],
    ["contig", "i32"],
    ["simple", "i32"],
    ["addr", "i32"],
    ["v", "f32"],
    ["tmode", "i32"],
    ["vv", "v128"],
    ["vi", "v128"],
    ["rowok", "i32"],
    ["rowp", "i32"],
  );
  for (let c = 0; c < NR; c++) {
    locals.push([`base${c}`, "i32"], [`oy${c}`, "i32"], [`ox${c}`, "i32"], [`ok${c}`, "i32"]);
  }
  let body = cp.map((n) => arg(n, G[n])).join("");
  // Column setup.
  for (let c = 0; c < NR; c++) {
    body += `
    local.get $j0 i32.const ${c} i32.add local.tee $j local.get $ncols i32.lt_u local.set $ok${c}
    local.get $fold
    if
      local.get $j local.get $P i32.div_u local.set $n
      local.get $j local.get $P i32.rem_u local.set $pp
      local.get $bt local.set $g
    else
      local.get $bt local.get $G i32.div_u local.set $n
      local.get $bt local.get $G i32.rem_u local.set $g
      local.get $j local.set $pp
    end
    local.get $n local.get $sn i32.mul local.get $g local.get $sg i32.mul i32.add local.set $base${c}
    local.get $pp local.get $OW i32.div_u local.get $strH i32.mul local.get $padT i32.sub local.set $oy${c}
    local.get $pp local.get $OW i32.rem_u local.get $strW i32.mul local.get $padL i32.sub local.set $ox${c}`;
  }
  // Fast-path eligibility: all columns valid, same image and row, consecutive unit-stride pixels.
  body += `
    local.get $dilH i32.const 1 i32.eq local.get $dilW i32.const 1 i32.eq i32.and local.set $simple
    local.get $simple local.get $strW i32.const 1 i32.eq i32.and local.get $sw i32.const 1 i32.eq i32.and`;
  for (let c = 1; c < NR; c++) {
    body +=
      ` local.get $ok${c} i32.and local.get $base${c} local.get $base0 i32.eq i32.and local.get $oy${c} local.get $oy0 i32.eq i32.and
      local.get $ox${c} local.get $ox0 i32.const ${c} i32.add i32.eq i32.and`;
  }
  body += ` local.set $contig
    ;; decompose k0 into (ci, ky, kx)
    local.get $k0 local.get $KH local.get $KW i32.mul i32.div_u local.set $ci
    local.get $k0 local.get $KH local.get $KW i32.mul i32.rem_u local.tee $k local.get $KW i32.div_u local.set $ky
    local.get $k local.get $KW i32.rem_u local.set $kx
    local.get $ci local.get $sc i32.mul local.set $coff
    local.get $k0 local.get $kc i32.add local.set $k1
    local.get $k0 local.set $k
    local.get $contig
    if
      ;; Fast path (forward convs): one image row per (ci, ky), the 8 pixels contiguous; the row state is
      ;; updated only when (ci, ky) changes.
      local.get $oy0 local.get $ky local.get $rdH i32.mul i32.add local.tee $iy local.get $H i32.lt_u local.set $rowok
      local.get $x local.get $base0 local.get $coff i32.add local.get $iy local.get $sh i32.mul i32.add i32.const 2 i32.shl i32.add
      local.set $rowp
      local.get $ox0 local.get $kx local.get $rdW i32.mul i32.add local.set $ix
      block $fd loop $fl
        local.get $k local.get $k1 i32.ge_u br_if $fd
        local.get $rowok
        if
          local.get $rowp local.get $ix i32.const 2 i32.shl i32.add local.set $addr
          local.get $ix i32.const 0 i32.ge_s local.get $ix i32.const ${NR} i32.add local.get $W i32.le_s i32.and
          if
            ${
    [...Array(NV).keys()].map((v) =>
      `local.get $dst local.get $addr v128.load offset=${16 * v} v128.store offset=${16 * v}`
    ).join("\n")
  }
          else
            local.get $ix i32x4.splat local.set $vi
            local.get $ix i32.const ${-NR} i32.le_s local.get $ix local.get $W i32.ge_s i32.or
            if local.get $rowp local.get $W i32.const ${NR} i32.sub i32.const 2 i32.shl i32.add local.set $addr end
            ${
    [...Array(NV).keys()].map((v) =>
      `local.get $dst local.get $addr v128.load offset=${16 * v}
            local.get $vi v128.const i32x4 ${4 * v} ${4 * v + 1} ${4 * v + 2} ${
        4 * v + 3
      } i32x4.add local.get $W i32x4.splat i32x4.lt_u
            v128.and v128.store offset=${16 * v}`
    ).join("\n")
  }
          end
        else
          ${
    [...Array(NV).keys()].map((v) => `local.get $dst v128.const i32x4 0 0 0 0 v128.store offset=${16 * v}`).join("\n")
  }
        end
        local.get $dst i32.const ${NR * 4} i32.add local.set $dst
        local.get $k i32.const 1 i32.add local.set $k
        local.get $ix local.get $rdW i32.add local.set $ix
        local.get $kx i32.const 1 i32.add local.tee $kx local.get $KW i32.eq
        if
          i32.const 0 local.set $kx
          local.get $ky i32.const 1 i32.add local.tee $ky local.get $KH i32.eq
          if
            i32.const 0 local.set $ky
            local.get $coff local.get $sc i32.add local.set $coff
          end
          local.get $oy0 local.get $ky local.get $rdH i32.mul i32.add local.tee $iy local.get $H i32.lt_u local.set $rowok
          local.get $x local.get $base0 local.get $coff i32.add local.get $iy local.get $sh i32.mul i32.add i32.const 2 i32.shl i32.add
          local.set $rowp
          local.get $ox0 local.set $ix
        end
        br $fl
      end end
      return
    end
    ;; "transposed" mode: columns are unrelated windows but each window is contiguous along kx (weight
    ;; gradients): copy 4 consecutive k of one column with one vector load and four lane stores.
    local.get $contig i32.eqz local.get $simple i32.and local.get $sw i32.const 1 i32.eq i32.and
    local.get $rdW i32.const 1 i32.eq i32.and local.get $KW i32.const 4 i32.ge_u i32.and local.set $tmode
    block $kd loop $kl
      local.get $k local.get $k1 i32.ge_u br_if $kd
      local.get $tmode local.get $kx i32.const 4 i32.add local.get $KW i32.le_u i32.and
      local.get $k i32.const 4 i32.add local.get $k1 i32.le_u i32.and
      if
        ${[...Array(NR).keys()].map((c) => tcol(c)).join("\n")}
        local.get $dst i32.const ${NR * 16} i32.add local.set $dst
        local.get $k i32.const 4 i32.add local.set $k
        local.get $kx i32.const 4 i32.add local.tee $kx local.get $KW i32.eq
        if
          i32.const 0 local.set $kx
          local.get $ky i32.const 1 i32.add local.tee $ky local.get $KH i32.eq
          if
            i32.const 0 local.set $ky
            local.get $ci i32.const 1 i32.add local.set $ci
            local.get $coff local.get $sc i32.add local.set $coff
          end
        end
        br $kl
      end
      local.get $contig
      if
        local.get $oy0 local.get $ky local.get $rdH i32.mul i32.add local.tee $iy
        local.get $H i32.lt_u
        if
          local.get $ox0 local.get $kx local.get $rdW i32.mul i32.add local.set $ix
          local.get $x local.get $base0 local.get $coff i32.add local.get $iy local.get $sh i32.mul i32.add local.get $ix i32.add
          i32.const 2 i32.shl i32.add local.set $addr
          local.get $ix i32.const 0 i32.ge_s local.get $ix i32.const ${NR} i32.add local.get $W i32.le_s i32.and
          if
            ${
    [...Array(NV).keys()].map((v) =>
      `local.get $dst local.get $addr v128.load offset=${16 * v} v128.store offset=${16 * v}`
    ).join("\n")
  }
          else
            ;; row partly outside the image: full vector loads (reading at most ${4 * (NR - 1)} bytes beyond
            ;; the row; the heap keeps slack after every block) masked to the lanes inside the image
            local.get $ix i32x4.splat local.set $vi
            local.get $ix i32.const ${-NR} i32.le_s local.get $ix local.get $W i32.ge_s i32.or
            if local.get $W i32.const ${NR} i32.sub local.set $ix end
            local.get $x local.get $base0 local.get $coff i32.add local.get $iy local.get $sh i32.mul i32.add local.get $ix i32.add
            i32.const 2 i32.shl i32.add local.set $addr
            ${
    [...Array(NV).keys()].map((v) =>
      `local.get $dst local.get $addr v128.load offset=${16 * v}
              local.get $vi v128.const i32x4 ${4 * v} ${4 * v + 1} ${4 * v + 2} ${
        4 * v + 3
      } i32x4.add local.get $W i32x4.splat i32x4.lt_u
              v128.and v128.store offset=${16 * v}`
    ).join("\n")
  }
          end
        else
          ${
    [...Array(NV).keys()].map((v) => `local.get $dst v128.const i32x4 0 0 0 0 v128.store offset=${16 * v}`).join("\n")
  }
        end
      else
        ${
    [...Array(NR).keys()].map((c) => `
        f32.const 0 local.set $v
        local.get $ok${c}
        if
          local.get $oy${c} local.get $ky local.get $rdH i32.mul i32.add local.set $py
          local.get $ox${c} local.get $kx local.get $rdW i32.mul i32.add local.set $px
          local.get $py i32.const 0 i32.ge_s local.get $px i32.const 0 i32.ge_s i32.and
          if
            local.get $simple
            if
              local.get $py local.set $iy local.get $px local.set $ix
            else
              local.get $py local.get $dilH i32.rem_u local.get $px local.get $dilW i32.rem_u i32.or
              if
                i32.const -1 local.set $iy
              else
                local.get $py local.get $dilH i32.div_u local.set $iy local.get $px local.get $dilW i32.div_u local.set $ix
              end
            end
            local.get $iy local.get $H i32.lt_u local.get $ix local.get $W i32.lt_u i32.and
            if
              local.get $x local.get $base${c} local.get $coff i32.add local.get $iy local.get $sh i32.mul i32.add
              local.get $ix local.get $sw i32.mul i32.add i32.const 2 i32.shl i32.add f32.load local.set $v
            end
          end
        end
        local.get $dst local.get $v f32.store offset=${4 * c}`).join("")
  }
      end
      ;; next k: kx, ky, ci
      local.get $dst i32.const ${NR * 4} i32.add local.set $dst
      local.get $kx i32.const 1 i32.add local.tee $kx local.get $KW i32.eq
      if
        i32.const 0 local.set $kx
        local.get $ky i32.const 1 i32.add local.tee $ky local.get $KH i32.eq
        if
          i32.const 0 local.set $ky
          local.get $ci i32.const 1 i32.add local.set $ci
          local.get $coff local.get $sc i32.add local.set $coff
        end
      end
      local.get $k i32.const 1 i32.add local.set $k
      br $kl
    end end`;
  return {
    name: "gemm_packconv",
    exported: false,
    params: [["args", "i32"], ["dst", "i32"], ["j0", "i32"], ["ncols", "i32"], ["k0", "i32"], ["kc", "i32"], [
      "bt",
      "i32",
    ]],
    locals,
    body,
  };
}

/** Calls the micro-kernel matching `$mr` rows (1..MR) with the given argument code. */
function rowDispatch(args: string): string {
  let code = `${args} call $gemm_mk1`;
  for (let r = 2; r <= MR; r++) {
    code = `local.get $mr i32.const ${r} i32.eq if ${args} call $gemm_mk${r === MR ? "" : r} else ${code} end`;
  }
  return code;
}

/** The GEMM driver over one chunk (batch, M block, N block); see {@link G} for the arguments. */
function computeKernel(): FuncDef {
  const names = Object.keys(G).filter((k) => k !== "COUNT" && G[k as keyof typeof G] < G.x) as (keyof typeof G)[];
  const locals: [string, ValType][] = names.map((n) => [n, "i32"]);
  locals.push(
    ["bt", "i32"],
    ["rem", "i32"],
    ["m0", "i32"],
    ["m1", "i32"],
    ["n0", "i32"],
    ["n1", "i32"],
    ["ab", "i32"],
    ["bb", "i32"],
    ["cb", "i32"],
    ["k0", "i32"],
    ["kc", "i32"],
    ["i", "i32"],
    ["j", "i32"],
    ["bp", "i32"],
    ["tile", "i32"],
    ["bpack", "i32"],
    ["acc", "i32"],
    ["mr", "i32"],
    ["nr", "i32"],
    ["r", "i32"],
    ["c", "i32"],
    ["pc", "i32"],
    ["pt", "i32"],
    ["pa", "i32"],
  );
  for (const n of ["aMode", "ars", "acs", "brs", "bcs", "apack"]) locals.push([n, "i32"]);
  let body = names.map((n) => arg(n, G[n])).join("") +
    ["aMode", "ars", "acs", "brs", "bcs"].map((n) => arg(n, G[n as keyof typeof G])).join("");
  body += `
    local.get $scr local.get $tid i32.const ${SCRATCH_STRIDE_LOG} i32.shl i32.add local.tee $tile
    i32.const ${MR * NR * 4} i32.add local.tee $bpack
    local.get $KC local.get $NC i32.mul i32.const 2 i32.shl i32.add local.set $apack
    local.get $chunk local.get $nMb local.get $nNb i32.mul i32.div_u local.set $bt
    local.get $chunk local.get $nMb local.get $nNb i32.mul i32.rem_u local.set $rem
    local.get $rem local.get $nNb i32.div_u local.get $MC i32.mul local.tee $m0 local.get $MC i32.add local.tee $m1
    local.get $M local.get $m1 local.get $M i32.lt_u select local.set $m1
    local.get $rem local.get $nNb i32.rem_u local.get $NC i32.mul local.tee $n0 local.get $NC i32.add local.tee $n1
    local.get $N local.get $n1 local.get $N i32.lt_u select local.set $n1
    local.get $Ap local.get $bt local.get $aMod i32.rem_u local.get $aBatch i32.mul i32.const 2 i32.shl i32.add local.set $ab
    local.get $Bp local.get $bt local.get $bMod i32.rem_u local.get $bBatch i32.mul i32.const 2 i32.shl i32.add local.set $bb
    local.get $C local.get $bt local.get $cBatch i32.mul i32.const 2 i32.shl i32.add local.set $cb
    i32.const 0 local.set $k0
    block $kbd loop $kbl
      local.get $k0 local.get $K i32.ge_u br_if $kbd
      local.get $K local.get $k0 i32.sub local.tee $kc local.get $KC local.get $kc local.get $KC i32.lt_u select local.set $kc
      local.get $beta local.get $k0 i32.const 0 i32.gt_u i32.or local.set $acc
      local.get $bMode
      if
        ;; pack this chunk's B columns for this K block: the implicit im2col matrix of a conv (mode 1) or
        ;; a strided matrix (mode 2)
        local.get $n0 local.set $j
        local.get $bpack local.set $bp
        block $pkd loop $pkl
          local.get $j local.get $n1 i32.ge_u br_if $pkd
          local.get $bMode i32.const 1 i32.eq
          if
            local.get $args local.get $bp local.get $j local.get $N local.get $k0 local.get $kc local.get $bt call $gemm_packconv
          else
            local.get $bb local.get $bcs local.get $brs local.get $j
            local.get $N local.get $j i32.sub local.tee $nr i32.const ${NR} local.get $nr i32.const ${NR} i32.lt_s select
            local.get $k0 local.get $kc local.get $bp call $gemm_ppanel${NR}
          end
          local.get $bp local.get $kc i32.const ${NR * 4} i32.mul i32.add local.set $bp
          local.get $j i32.const ${NR} i32.add local.set $j
          br $pkl
        end end
      end
      local.get $aMode
      if
        ;; pack this chunk's rows of A for this K block
        local.get $m0 local.set $i
        block $pad loop $pal
          local.get $i local.get $m1 i32.ge_u br_if $pad
          local.get $ab local.get $ars local.get $acs local.get $i
          local.get $M local.get $i i32.sub local.tee $mr i32.const ${MR} local.get $mr i32.const ${MR} i32.lt_s select
          local.get $k0 local.get $kc
          local.get $apack local.get $i local.get $m0 i32.sub local.get $kc i32.mul i32.const 2 i32.shl i32.add
          call $gemm_ppanel${MR}
          local.get $i i32.const ${MR} i32.add local.set $i
          br $pal
        end end
      end
      local.get $n0 local.set $j
      block $jd loop $jl
        local.get $j local.get $n1 i32.ge_u br_if $jd
        local.get $bMode
        if :i32
          local.get $bpack local.get $j local.get $n0 i32.sub local.get $kc i32.mul i32.const 2 i32.shl i32.add
        else
          local.get $bb local.get $k0 local.get $Np i32.mul local.get $j local.get $kc i32.mul i32.add i32.const 2 i32.shl i32.add
        end
        local.set $bp
        local.get $N local.get $j i32.sub local.tee $nr i32.const ${NR} local.get $nr i32.const ${NR} i32.lt_s select local.set $nr
        local.get $m0 local.set $i
        block $id loop $il
          local.get $i local.get $m1 i32.ge_u br_if $id
          local.get $M local.get $i i32.sub local.tee $mr i32.const ${MR} local.get $mr i32.const ${MR} i32.lt_s select local.set $mr
          local.get $aMode
          if :i32
            local.get $apack local.get $i local.get $m0 i32.sub local.get $kc i32.mul i32.const 2 i32.shl i32.add
          else
            local.get $ab local.get $k0 local.get $Mp i32.mul local.get $i local.get $kc i32.mul i32.add i32.const 2 i32.shl i32.add
          end
          local.set $pa
          local.get $nr i32.const ${NR} i32.eq
          if
            local.get $cb local.get $i local.get $ldc i32.mul local.get $j i32.add i32.const 2 i32.shl i32.add local.set $pc
            ;; the last panel of M may be short: a micro-kernel per row count
            ${
    rowDispatch(
      "local.get $pa local.get $bp local.get $pc local.get $ldc i32.const 2 i32.shl local.get $kc local.get $acc",
    )
  }
          else
            local.get $pa local.get $bp local.get $tile i32.const ${NR * 4} local.get $kc i32.const 0 call $gemm_mk
            ;; merge the valid part of the tile
            i32.const 0 local.set $r
            block $rd loop $rl
              local.get $r local.get $mr i32.ge_u br_if $rd
              local.get $cb local.get $i local.get $r i32.add local.get $ldc i32.mul local.get $j i32.add i32.const 2 i32.shl i32.add local.set $pc
              local.get $tile local.get $r i32.const ${NR * 4} i32.mul i32.add local.set $pt
              i32.const 0 local.set $c
              block $cd loop $cl
                local.get $c local.get $nr i32.ge_u br_if $cd
                local.get $pc
                local.get $pt f32.load
                local.get $pc f32.load f32.const 0 local.get $acc select
                f32.add f32.store
                local.get $pc i32.const 4 i32.add local.set $pc
                local.get $pt i32.const 4 i32.add local.set $pt
                local.get $c i32.const 1 i32.add local.set $c
                br $cl
              end end
              local.get $r i32.const 1 i32.add local.set $r
              br $rl
            end end
          end
          local.get $i i32.const ${MR} i32.add local.set $i
          br $il
        end end
        local.get $j i32.const ${NR} i32.add local.set $j
        br $jl
      end end
      local.get $k0 local.get $KC i32.add local.set $k0
      br $kbl
    end end`;
  return { name: "gemm_compute", params: KPARAMS, locals, body };
}

/** Every GEMM kernel. */
export function gemmKernels(relaxed: boolean): FuncDef[] {
  return [
    microKernel(relaxed),
    ...[1, 2, 3, 4, 5].map((r) => microKernel(relaxed, r)),
    panelPacker(MR),
    panelPacker(NR),
    packKernel("gemm_packA", MR),
    packKernel("gemm_packB", NR),
    packConv(),
    computeKernel(),
    directConv(relaxed, 16),
    directConv(relaxed, 4),
    directConvDot(relaxed),
  ];
}

/**
 * Direct convolution in dot-product form for a large kernel over a small output (the weight gradient
 * of depthwise-like convs): each output pixel is a dot product along the kernel rows, vectorised over
 * kx with 4 output pixels of a row accumulated together. Needs unit kernel dilation along x.
 */
function directConvDot(relaxed: boolean): FuncDef {
  const locals = convLocals();
  for (const n of ["kx4", "km", "xq"]) locals.push([n, "i32"]);
  for (let v = 0; v < 4; v++) locals.push([`a${v}`, "v128"]);
  locals.push(["mask", "v128"], ["wm", "v128"]);
  let body = convPadPrologue();
  body += `
    local.get $KW i32.const -4 i32.and local.set $kx4
    i32.const 0 local.set $co
    block $cod loop $col
      local.get $co local.get $Co i32.ge_u br_if $cod
      local.get $w local.get $g local.get $Co i32.mul local.get $co i32.add local.get $Ci i32.mul local.get $KH i32.mul local.get $KW i32.mul
      i32.const 2 i32.shl i32.add local.set $wb
      local.get $out local.get $n local.get $G i32.mul local.get $g i32.add local.get $Co i32.mul local.get $co i32.add
      local.get $OH i32.mul local.get $OW i32.mul i32.const 2 i32.shl i32.add local.set $ob
      i32.const 0 local.set $oy
      block $yd loop $yl
        local.get $oy local.get $OH i32.ge_u br_if $yd
        i32.const 0 local.set $ox
        block $xd2 loop $xl2
          local.get $ox local.get $OW i32.ge_u br_if $xd2
          v128.const i32x4 0 0 0 0 local.tee $a0 local.tee $a1 local.tee $a2 local.set $a3
          local.get $wb local.set $wp
          i32.const 0 local.set $ci
          block $cd2 loop $cl2
            local.get $ci local.get $Ci i32.ge_u br_if $cd2
            i32.const 0 local.set $ky
            block $kyd loop $kyl
              local.get $ky local.get $KH i32.ge_u br_if $kyd
              local.get $P local.get $ci local.get $plane i32.mul i32.add
              local.get $oy local.get $strH i32.mul local.get $ky local.get $rdH i32.mul i32.add local.get $Wp i32.mul
              local.get $ox i32.add i32.const 2 i32.shl i32.add local.set $rp
              i32.const 0 local.set $kx
              block $kxd loop $kxl
                local.get $kx local.get $kx4 i32.ge_u br_if $kxd
                local.get $wp local.get $kx i32.const 2 i32.shl i32.add v128.load local.set $wv
                local.get $rp local.get $kx i32.const 2 i32.shl i32.add local.set $xq
                ${
    [0, 1, 2, 3].map((v) =>
      vmadd(relaxed, "local.get $wv", `local.get $xq v128.load offset=${4 * v}`, `local.get $a${v}`) +
      ` local.set $a${v}`
    ).join("\n")
  }
                local.get $kx i32.const 4 i32.add local.set $kx
                br $kxl
              end end
              ;; the last KW % 4 taps: the weight vector masked to the lanes inside the row
              local.get $kx local.get $KW i32.lt_u
              if
                local.get $wp local.get $kx i32.const 2 i32.shl i32.add v128.load
                local.get $kx i32x4.splat v128.const i32x4 0 1 2 3 i32x4.add local.get $KW i32x4.splat i32x4.lt_u v128.and local.set $wv
                local.get $rp local.get $kx i32.const 2 i32.shl i32.add local.set $xq
                ${
    [0, 1, 2, 3].map((v) =>
      vmadd(relaxed, "local.get $wv", `local.get $xq v128.load offset=${4 * v}`, `local.get $a${v}`) +
      ` local.set $a${v}`
    ).join("\n")
  }
              end
              local.get $wp local.get $KW i32.const 2 i32.shl i32.add local.set $wp
              local.get $ky i32.const 1 i32.add local.set $ky
              br $kyl
            end end
            local.get $ci i32.const 1 i32.add local.set $ci
            br $cl2
          end end
          ;; horizontal sums; store the outputs that exist
          ${
    [0, 1, 2, 3].map((v) => `
          local.get $ox i32.const ${v} i32.add local.get $OW i32.lt_u
          if
            local.get $ob local.get $oy local.get $OW i32.mul local.get $ox i32.add i32.const ${v} i32.add i32.const 2 i32.shl i32.add
            local.get $a${v} f32x4.extract_lane 0 local.get $a${v} f32x4.extract_lane 1 f32.add
            local.get $a${v} f32x4.extract_lane 2 local.get $a${v} f32x4.extract_lane 3 f32.add f32.add
            f32.store
          end`).join("")
  }
          local.get $ox i32.const 4 i32.add local.set $ox
          br $xl2
        end end
        local.get $oy i32.const 1 i32.add local.set $oy
        br $yl
      end end
      local.get $co i32.const 1 i32.add local.set $co
      br $col
    end end`;
  return { name: "dconvdot", params: KPARAMS, locals, body };
}

/** Argument word indices of the direct convolution kernels. */
export const D = {
  x: 0,
  sn: 1,
  sg: 2,
  sc: 3,
  sh: 4,
  sw: 5,
  H: 6,
  W: 7,
  w: 8,
  out: 9,
  G: 10,
  Ci: 11,
  Co: 12,
  KH: 13,
  KW: 14,
  OH: 15,
  OW: 16,
  strH: 17,
  padT: 18,
  padL: 19,
  rdH: 20,
  rdW: 21,
  Hp: 22,
  Wp: 23,
  scr: 24,
  COUNT: 25,
} as const;

/** Shared start of the direct conv kernels: locals for (n, g), scratch pointers and the zero-padded planes. */
function convPadPrologue(): string {
  const names = Object.keys(D).filter((k) => k !== "COUNT") as (keyof typeof D)[];
  let body = names.map((n) => arg(n, D[n])).join("");
  body += `
    local.get $chunk local.get $G i32.div_u local.set $n
    local.get $chunk local.get $G i32.rem_u local.set $g
    local.get $scr local.get $tid i32.const ${SCRATCH_STRIDE_LOG} i32.shl i32.add local.tee $P
    local.get $Ci local.get $Hp i32.mul local.get $Wp i32.mul i32.const 2 i32.shl i32.add local.set $O
    local.get $Hp local.get $Wp i32.mul i32.const 2 i32.shl local.set $plane
    local.get $rdW i32.const 2 i32.shl local.set $rdWb
    ;; zero-padded copies of the Ci input planes of (n, g)
    i32.const 0 local.get $padL i32.sub local.tee $ix0 i32.const 0 local.get $ix0 i32.const 0 i32.gt_s select local.set $ix0
    local.get $Wp local.get $padL i32.sub local.tee $ix1 local.get $W local.get $ix1 local.get $W i32.lt_s select local.set $ix1
    i32.const 0 local.set $ci
    block $cd loop $cl
      local.get $ci local.get $Ci i32.ge_u br_if $cd
      i32.const 0 local.set $py
      block $pd loop $pl
        local.get $py local.get $Hp i32.ge_u br_if $pd
        local.get $P local.get $ci local.get $Hp i32.mul local.get $py i32.add local.get $Wp i32.mul i32.const 2 i32.shl i32.add local.tee $row
        i32.const 0 local.get $Wp i32.const 2 i32.shl memory.fill
        local.get $py local.get $padT i32.sub local.tee $iy local.get $H i32.lt_u
        local.get $ix0 local.get $ix1 i32.lt_s i32.and
        if
          local.get $x local.get $n local.get $sn i32.mul local.get $g local.get $sg i32.mul i32.add
          local.get $ci local.get $sc i32.mul i32.add local.get $iy local.get $sh i32.mul i32.add i32.const 2 i32.shl i32.add local.set $xp
          local.get $sw i32.const 1 i32.eq
          if
            local.get $row local.get $ix0 local.get $padL i32.add i32.const 2 i32.shl i32.add
            local.get $xp local.get $ix0 i32.const 2 i32.shl i32.add
            local.get $ix1 local.get $ix0 i32.sub i32.const 2 i32.shl memory.copy
          else
            local.get $ix0 local.set $j
            block $xd loop $xl
              local.get $j local.get $ix1 i32.ge_s br_if $xd
              local.get $row local.get $j local.get $padL i32.add i32.const 2 i32.shl i32.add
              local.get $xp local.get $j local.get $sw i32.mul i32.const 2 i32.shl i32.add f32.load f32.store
              local.get $j i32.const 1 i32.add local.set $j
              br $xl
            end end
          end
        end
        local.get $py i32.const 1 i32.add local.set $py
        br $pl
      end end
      local.get $ci i32.const 1 i32.add local.set $ci
      br $cl
    end end
`;
  return body;
}

/** Locals every direct conv kernel declares. */
function convLocals(): [string, ValType][] {
  const names = Object.keys(D).filter((k) => k !== "COUNT") as (keyof typeof D)[];
  const locals: [string, ValType][] = names.map((n) => [n, "i32"]);
  for (
    const n of [
      "n",
      "g",
      "P",
      "O",
      "ci",
      "py",
      "iy",
      "row",
      "ix0",
      "ix1",
      "j",
      "co",
      "oy",
      "ox",
      "ky",
      "kx",
      "rp",
      "wp",
      "xp",
      "wb",
      "ob",
      "plane",
      "rdWb",
    ]
  ) {
    locals.push([n, "i32"]);
  }
  locals.push(["wv", "v128"]);
  return locals;
}

/**
 * Direct convolution for groups with few channels (depthwise and the like), unit horizontal stride
 * and no input dilation: chunk (n, g) copies its input planes into a zero-padded scratch copy, then
 * accumulates S outputs of a row in registers over every tap. `S` is 16 or 4 output pixels.
 */
function directConv(relaxed: boolean, S: 16 | 4): FuncDef {
  const locals = convLocals();
  const V = S / 4;
  for (let v = 0; v < V; v++) locals.push([`a${v}`, "v128"]);
  let body = convPadPrologue();
  body += `
    ;; outputs
    i32.const 0 local.set $co
    block $cod loop $col
      local.get $co local.get $Co i32.ge_u br_if $cod
      local.get $w local.get $g local.get $Co i32.mul local.get $co i32.add local.get $Ci i32.mul local.get $KH i32.mul local.get $KW i32.mul
      i32.const 2 i32.shl i32.add local.set $wb
      local.get $out local.get $n local.get $G i32.mul local.get $g i32.add local.get $Co i32.mul local.get $co i32.add
      local.get $OH i32.mul local.get $OW i32.mul i32.const 2 i32.shl i32.add local.set $ob
      i32.const 0 local.set $oy
      block $yd loop $yl
        local.get $oy local.get $OH i32.ge_u br_if $yd
        i32.const 0 local.set $ox
        block $xd2 loop $xl2
          local.get $ox local.get $OW i32.ge_u br_if $xd2
          ${[...Array(V).keys()].map((v) => `v128.const i32x4 0 0 0 0 local.set $a${v}`).join(" ")}
          local.get $wb local.set $wp
          i32.const 0 local.set $ci
          block $cd2 loop $cl2
            local.get $ci local.get $Ci i32.ge_u br_if $cd2
            i32.const 0 local.set $ky
            block $kyd loop $kyl
              local.get $ky local.get $KH i32.ge_u br_if $kyd
              local.get $P local.get $ci local.get $plane i32.mul i32.add
              local.get $oy local.get $strH i32.mul local.get $ky local.get $rdH i32.mul i32.add local.get $Wp i32.mul
              local.get $ox i32.add i32.const 2 i32.shl i32.add local.set $rp
              local.get $KW local.set $kx
              loop $kxl
                local.get $wp v128.load32_splat local.set $wv
                ${
    [...Array(V).keys()].map((v) =>
      vmadd(relaxed, "local.get $wv", `local.get $rp v128.load offset=${16 * v}`, `local.get $a${v}`) +
      ` local.set $a${v}`
    ).join("\n")
  }
                local.get $rp local.get $rdWb i32.add local.set $rp
                local.get $wp i32.const 4 i32.add local.set $wp
                local.get $kx i32.const 1 i32.sub local.tee $kx br_if $kxl
              end
              local.get $ky i32.const 1 i32.add local.set $ky
              br $kyl
            end end
            local.get $ci i32.const 1 i32.add local.set $ci
            br $cl2
          end end
          ${
    [...Array(V).keys()].map((v) =>
      `local.get $O local.get $ox i32.const 2 i32.shl i32.add local.get $a${v} v128.store offset=${16 * v}`
    ).join("\n")
  }
          local.get $ox i32.const ${S} i32.add local.set $ox
          br $xl2
        end end
        local.get $ob local.get $oy local.get $OW i32.mul i32.const 2 i32.shl i32.add local.get $O local.get $OW i32.const 2 i32.shl memory.copy
        local.get $oy i32.const 1 i32.add local.set $oy
        br $yl
      end end
      local.get $co i32.const 1 i32.add local.set $co
      br $col
    end end`;
  return { name: `dconv${S}`, params: KPARAMS, locals, body };
}

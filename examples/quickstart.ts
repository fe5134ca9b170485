import * as d from "@difflab/difflab";

// Recover w = [1, -2, 0.5] from noiseless data by gradient descent on the mean squared error.
const x = d.random.normal(d.randomKey(0), [64, 3]);
const y = d.matmul(x, d.tensor([[1], [-2], [0.5]]));
const loss = (w: d.Tensor) => d.mean(d.square(d.sub(d.matmul(x, w), y)));
let w = d.zeros([3, 1]);
for (let step = 0; step < 100; step++) {
  const next = d.tidy(() => d.sub(w, d.mul(d.grad(loss)(w) as d.Tensor, 0.1))); // tidy frees the temporaries
  w.dispose();
  w = next;
}
console.log(await w.array(), await loss(w).item()); // ≈ [[1], [-2], [0.5]], ≈ 0

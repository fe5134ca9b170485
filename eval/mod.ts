/**
 * @file Quality scores for generated images: a small conv classifier trained with
 * this library (cached per dataset), the conditional accuracy of class-conditional
 * samples, and the Fréchet distance between classifier features of samples and
 * real images.
 *
 * @example
 * ```ts
 * import { loadDataset } from "./data/mod.ts";
 * import { conditionalAccuracy, datasetStats, getClassifier, sampleFrechet } from "./eval/mod.ts";
 * const ds = await loadDataset("mnist");
 * const { params } = await getClassifier(ds, "runs/eval"); // trains once, then loads
 * // samples: Tensor [n, 1, 32, 32] in [-1, 1]; labels: the classes they were generated for
 * // const { accuracy } = await conditionalAccuracy(params, samples, labels);
 * // const fd = await sampleFrechet(params, samples, await datasetStats(params, ds));
 * ```
 * @module
 */
export * from "./classifier.ts";
export * from "./frechet.ts";
export * from "./metrics.ts";

/**
 * train.onnx in the page: one `session.run` per step (forward, loss, gradients and AdamW are in
 * the graph), over the store in the order `hollowc train` uses (runtime/train/record-order.ts), with
 * the same feeds as runtime/train/step-graph.ts (runtime/train/step-feeds.ts). The LoRA values and both AdamW moments go in and come
 * back every step.
 */
import type * as Ort from 'onnxruntime-web';
import {
  ArtifactDescription,
  CompileManifest,
  LEARNING_RATE,
  LOSS,
  SAMPLE,
  STEP,
  expAvgName,
  expAvgSqName,
  isLoraParam,
  updatedName,
} from '../../../compiler/manifest';
import { LoraModuleValues } from '../../formats/lora-format';
import { SampleOrder } from '../../train/record-order';
import { stepDataValues } from '../../train/step-feeds';
import type { StoreRecord } from '../../store/store';
import type { WebStore } from './folder';
import { OrtModule, floatOutput, webScalar, webTensor } from './tensors';

export interface Param {
  name: string;
  shape: number[];
  value: Float32Array;
  expAvg: Float32Array;
  expAvgSq: Float32Array;
}

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

export class WebTrainer {
  readonly params: Param[];
  readonly batch: number;
  readonly outputs: string[];
  private readonly inputs: Map<string, ArtifactDescription['inputs'][number]>;
  private readonly order: SampleOrder;
  step = 0;

  constructor(
    private readonly ort: OrtModule,
    private readonly session: Ort.InferenceSession,
    private readonly manifest: CompileManifest,
    private readonly store: WebStore,
    initial: Map<string, Float32Array>,
    readonly seed: number,
    readonly lr: number,
  ) {
    const artifact = manifest.artifacts.train!;
    this.inputs = new Map(artifact.inputs.map((i) => [i.name, i]));
    this.params = artifact.inputs
      .filter((i) => isLoraParam(i.name))
      .map((i) => {
        const shape = i.shape as number[];
        const v = initial.get(i.name);
        if (!v || v.length !== size(shape)) throw new Error(`lora-init has no values of shape [${shape}] for ${i.name}`);
        return {
          name: i.name,
          shape,
          value: Float32Array.from(v),
          expAvg: new Float32Array(size(shape)),
          expAvgSq: new Float32Array(size(shape)),
        };
      });
    this.batch = (this.inputs.get(SAMPLE)!.shape as number[])[0];
    this.outputs = [
      LOSS,
      ...this.params.flatMap((p) => [updatedName(p.name), updatedName(expAvgName(p.name)), updatedName(expAvgSqName(p.name))]),
    ];
    this.order = new SampleOrder(seed, store.count, this.batch);
  }

  private dataFeeds(records: StoreRecord[]): Record<string, Ort.Tensor> {
    const feeds: Record<string, Ort.Tensor> = {};
    const values = stepDataValues((n) => this.inputs.has(n), this.store, records, this.manifest.training.priorWeight);
    for (const [name, f] of values) feeds[name] = webTensor(this.ort, this.inputs.get(name), f.values, f.dims);
    return feeds;
  }

  private paramFeeds(lr: number, step: number): Record<string, Ort.Tensor> {
    const { ort } = this;
    const feeds: Record<string, Ort.Tensor> = {};
    for (const p of this.params) {
      feeds[p.name] = new ort.Tensor('float32', p.value, p.shape);
      feeds[expAvgName(p.name)] = new ort.Tensor('float32', p.expAvg, p.shape);
      feeds[expAvgSqName(p.name)] = new ort.Tensor('float32', p.expAvgSq, p.shape);
    }
    feeds[LEARNING_RATE] = webScalar(ort, this.inputs.get(LEARNING_RATE), lr);
    feeds[STEP] = webScalar(ort, this.inputs.get(STEP), step);
    return feeds;
  }

  /** The next step; returns its loss and the seconds session.run took. */
  async trainStep(): Promise<{ step: number; loss: number; seconds: number }> {
    const step = this.step + 1;
    const records = this.order.batchFor(step).map((i) => this.store.read(i));
    const feeds = { ...this.dataFeeds(records), ...this.paramFeeds(this.lr, step) };
    const t0 = performance.now();
    const result = await this.session.run(feeds, this.outputs);
    const seconds = (performance.now() - t0) / 1000;
    const loss = Number(floatOutput(result[LOSS], LOSS)[0]);
    if (!Number.isFinite(loss)) throw new Error(`step ${step}: the loss is ${loss}; training stopped (lower the learning rate)`);
    for (const p of this.params) {
      p.value = Float32Array.from(floatOutput(result[updatedName(p.name)], p.name));
      p.expAvg = Float32Array.from(floatOutput(result[updatedName(expAvgName(p.name))], p.name));
      p.expAvgSq = Float32Array.from(floatOutput(result[updatedName(expAvgSqName(p.name))], p.name));
    }
    this.step = step;
    return { step, loss, seconds };
  }

  /** Mean loss over the first batches of the store in store order at lr = 0 (AdamW then changes nothing), as `hollowc train --evaluate`. */
  async lossAtRest(batches = Math.ceil(this.store.count / this.batch)): Promise<number> {
    const n = Math.max(1, Math.min(batches, Math.ceil(this.store.count / this.batch)));
    let sum = 0;
    for (let b = 0; b < n; b++) {
      const records = Array.from({ length: this.batch }, (_, k) => this.store.read((b * this.batch + k) % this.store.count));
      const result = await this.session.run({ ...this.dataFeeds(records), ...this.paramFeeds(0, 1) }, [LOSS]);
      sum += Number(floatOutput(result[LOSS], LOSS)[0]);
    }
    return sum / n;
  }

  values(): Map<string, Float32Array> {
    return new Map(this.params.map((p) => [p.name, p.value]));
  }

  /** The trained modules' LoRA, as runtime/train/train.ts's loraModules gives it to the file writer. */
  loraModules(): LoraModuleValues[] {
    const values = this.values();
    return this.manifest.lora.targets
      .filter((t) => t.trained && values.has(t.lora_A.name))
      .map((t) => ({
        module: t.module,
        a: { shape: t.lora_A.shape, data: values.get(t.lora_A.name)! },
        b: { shape: t.lora_B.shape, data: values.get(t.lora_B.name)! },
      }));
  }
}

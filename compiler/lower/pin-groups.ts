/**
 * `--pin-groups LAYER=w1,...` against a model's Grouped MoE layers, for lowering (`moec run`,
 * `compile`, ONNX export) and the PyTorch export alike: a pin names a layer or a prefix of
 * layers' paths and gives one weight per group; a layer takes the first pin that names it.
 */

/** What did not apply, for the command line to report. */
export interface PinReport {
  /** Pins whose weight count differs from their layer's group count. */
  problems: string[];
  /** Pins that named no Grouped layer. */
  unused: string[];
  /** Every Grouped layer seen, by path. */
  groupedLayers: string[];
}

export class PinMatcher {
  private readonly used = new Set<string>();
  private readonly layers: string[] = [];
  private readonly problems: string[] = [];

  constructor(private readonly pins: ReadonlyMap<string, readonly number[]>) {}

  /** The fixed group weights of the Grouped layer at `layer` with `groups` groups, if pinned. */
  weightsFor(layer: string, groups: number): number[] | undefined {
    this.layers.push(layer);
    for (const [key, weights] of this.pins) {
      if (layer !== key && !layer.startsWith(`${key}.`)) continue;
      this.used.add(key);
      if (weights.length !== groups) {
        this.problems.push(
          `--pin-groups ${key}: the layer ${layer} has ${groups} groups, ${weights.length} weights given`,
        );
        return undefined;
      }
      return [...weights];
    }
    return undefined;
  }

  report(): PinReport {
    return {
      problems: this.problems,
      unused: [...this.pins.keys()].filter((k) => !this.used.has(k)),
      groupedLayers: this.layers,
    };
  }
}

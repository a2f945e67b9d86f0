/** Where source text is: the one type the grammar and every diagnostic share. */

/** A half-open range of source text: `start` inclusive, `end` exclusive, both 0-based offsets. */
export interface Span {
  start: number;
  end: number;
}

import { isDeepStrictEqual } from 'node:util';
import { isMap, isNode, isPair, isScalar, isSeq, type Document, type Node } from 'yaml';

/**
 * JSON in, JSON out (issue 11 item 19). A JSON manifest is parsed as YAML (JSON is YAML's flow style), edited like
 * any other, and printed back here as JSON: every node whose value is unchanged is written as the exact text it was
 * read from (its spacing, number spelling, escapes, inline arrays), and only the objects and arrays on the way to an
 * edit are laid out anew, one member per line at the file's indentation. Nodes are only ever added inside existing
 * ones, never moved, so an unchanged node's text still sits at the depth its own indentation was written for.
 */

/** The document's text is JSON (not YAML that happens to be flow style), judged by JSON itself. */
export const isJsonText = (source: string): boolean => {
  const body = source.replace(/^---[ \t]*(\r?\n|$)/, '').replace(/(^|\n)\.\.\.[ \t]*\r?\n?$/, '').trim();
  if (!body.startsWith('{') && !body.startsWith('[')) return false;
  try {
    JSON.parse(body);
    return true;
  } catch {
    return false;
  }
};

/** The indentation step of a JSON text: its first indented member line, else 2 (minified input). */
export const jsonIndent = (source: string): number => {
  const n = /^[{[][ \t]*\r?\n( +)\S/.exec(source.replace(/^---[ \t]*\r?\n/, '').trimStart())?.[1]?.length;
  return n !== undefined && n >= 1 && n <= 8 ? n : 2;
};

/** `doc` as JSON, reusing `input` (the text the document was parsed from, whole stream) for unchanged nodes. */
export const printJson = (doc: Document, input: string, indent: number): string => `${print(doc.contents, input, indent, 0)}\n`;

const print = (node: unknown, input: string, step: number, depth: number): string => {
  const original = sourceOf(node, input);
  if (original !== undefined) return original;
  const pad = (d: number) => ' '.repeat(d * step);
  if (isMap(node)) {
    if (node.items.length === 0) return '{}';
    const members = node.items.map((pair) => {
      const key = isPair(pair) ? pair.key : undefined;
      const keyText = sourceOf(key, input) ?? JSON.stringify(String(isScalar(key) ? key.value : key));
      return `${pad(depth + 1)}${keyText}: ${print(pair.value, input, step, depth + 1)}`;
    });
    return `{\n${members.join(',\n')}\n${pad(depth)}}`;
  }
  if (isSeq(node)) {
    if (node.items.length === 0) return '[]';
    return `[\n${node.items.map((item) => `${pad(depth + 1)}${print(item, input, step, depth + 1)}`).join(',\n')}\n${pad(depth)}]`;
  }
  return JSON.stringify(isNode(node) ? node.toJSON() : (node ?? null)) ?? 'null';
};

/** The text `node` was read from, if it was read at all and still holds the same value. */
const sourceOf = (node: unknown, input: string): string | undefined => {
  if (!isNode(node)) return undefined;
  const range = (node as Node).range;
  if (!range) return undefined;
  const text = input.slice(range[0], range[1]);
  try {
    return isDeepStrictEqual(JSON.parse(text), node.toJSON()) ? text : undefined;
  } catch {
    return undefined;
  }
};

import { Composer, CST, Parser, type Document } from 'yaml';

/**
 * A multi-document YAML stream cut into its documents, each with the exact text it came from, so a document
 * nobody changes is written back byte for byte (comments, quoting, flow style and all) and only changed
 * documents are re-printed.
 */

/** Kubernetes reads manifests as YAML 1.1 (`yes`, `on` are booleans there); parse and print the same way. */
const YAML_OPTIONS = { version: '1.1', uniqueKeys: true, prettyErrors: true } as const;

export interface StreamDocument {
  /** Stream-level text before the document: comments, blank lines, directives. */
  prefix: string;
  /** The document's own text, from its `---` (if any) to the start of the next one. */
  source: string;
  /** A `...` end marker after it, if any. */
  suffix: string;
  /** The source began with `---`. */
  explicitStart: boolean;
  doc: Document.Parsed;
}

export interface YamlStream {
  documents: StreamDocument[];
  /** Text after the last document (comments, blank lines). */
  trailer: string;
  style: PrintStyle;
}

export interface PrintStyle {
  indent: number;
  /** `key:\n  - item` (true) or kubectl's `key:\n- item` (false). */
  indentSeq: boolean;
  /** `{ a: 1 }` (true) or `{a: 1}` (false): how the file writes its flow collections, so untouched ones stay as written. */
  flowPadding: boolean;
}

/** Cut `text` into documents. Never throws for bad YAML: a broken document carries its errors in `doc.errors`. */
export const readYamlStream = (text: string): YamlStream => {
  const pieces: Omit<StreamDocument, 'doc'>[] = [];
  const composer = new Composer(YAML_OPTIONS);
  const docs: Document.Parsed[] = [];
  let pending = '';
  let directives: CST.Token[] = [];
  for (const token of new Parser().parse(text)) {
    const raw = CST.stringify(token);
    if (token.type === 'document') {
      // Only directives and the document go to the composer: a stream-level comment would otherwise become the
      // document's commentBefore and be printed twice (once from `prefix`, once by the document).
      for (const t of [...directives, token]) docs.push(...composer.next(t));
      directives = [];
      pieces.push({ prefix: pending, source: raw, suffix: '', explicitStart: raw.startsWith('---') });
      pending = '';
    } else if (token.type === 'doc-end') {
      docs.push(...composer.next(token));
      const last = pieces.at(-1);
      if (last && pending === '') last.suffix += raw;
      else pending += raw;
    } else {
      if (token.type === 'directive') directives.push(token);
      pending += raw;
    }
  }
  docs.push(...composer.end());
  if (docs.length !== pieces.length) throw new Error(`internal: ${pieces.length} YAML documents read but ${docs.length} composed`);
  return { documents: pieces.map((p, i) => ({ ...p, doc: docs[i]! })), trailer: pending, style: detectStyle(text) };
};

/** Print a changed document in the style of the file it came from. */
export const printDocument = (d: StreamDocument, style: PrintStyle): string =>
  d.prefix +
  (d.explicitStart ? '---\n' : '') +
  alignComments(
    d.doc.toString({ directives: false, lineWidth: 0, indent: style.indent, indentSeq: style.indentSeq, flowCollectionPadding: style.flowPadding }),
    d.source,
  ) +
  d.suffix;

/** `key: value   # note` with the spaces before the `#` folded to one: what the printer makes of an inline comment. */
const INLINE_COMMENT = /^(.*\S)[ \t]+(#.*)$/;
const foldComment = (line: string): string | undefined => {
  const m = INLINE_COMMENT.exec(line);
  return m ? `${m[1]} ${m[2]}` : undefined;
};

/**
 * The printer keeps comments but not the spaces before an inline one, so a column of aligned comments would come
 * out ragged. A printed line that differs from a line of the source only there gets the source line back.
 */
const alignComments = (printed: string, source: string): string => {
  const original = new Map<string, string>();
  for (const line of source.split('\n')) {
    const folded = foldComment(line);
    if (folded !== undefined && folded !== line) original.set(folded, line);
  }
  if (original.size === 0) return printed;
  return printed
    .split('\n')
    .map((line) => original.get(line) ?? line)
    .join('\n');
};

export const printSource = (d: StreamDocument): string => d.prefix + d.source + d.suffix;

/** `key:` followed by `- item` at the same indentation: the kubectl / `kubectl create --dry-run -o yaml` habit. */
const COMPACT_SEQ = /^( *)[^\s#-][^\n]*:[ \t]*\n\1- /m;
const NESTED_KEY = /^[^\s#][^\n]*:[ \t]*\n( +)[^\s#-]/m;
/** A non-empty flow collection opening a value (`key: {`, `- [`), padded inside or not. */
const FLOW_OPEN = /(?:^|:|-)[ \t]+[{[]( ?)[^\s\]}]/gm;

const detectStyle = (text: string): PrintStyle => {
  const indent = NESTED_KEY.exec(text)?.[1]?.length ?? 2;
  const flows = [...text.matchAll(FLOW_OPEN)];
  // The majority decides; without flow collections in the file, yaml's default (padded) stays.
  const padded = flows.filter((m) => m[1] === ' ').length;
  return { indent: indent >= 1 && indent <= 8 ? indent : 2, indentSeq: !COMPACT_SEQ.test(text), flowPadding: flows.length === 0 || padded * 2 >= flows.length };
};

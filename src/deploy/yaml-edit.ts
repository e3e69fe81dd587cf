import { isAlias, isMap, isNode, isScalar, isSeq, visit, YAMLMap, YAMLSeq, type Document } from 'yaml';

/**
 * Small in-place edits on a parsed YAML document. Editing the nodes (rather than re-creating the document from
 * plain objects) keeps every comment and every value the injector does not touch exactly as written.
 */

/** The node at `key`, or undefined when missing or written as an empty value (`annotations:`). */
export const child = (map: YAMLMap, key: string): unknown => {
  const v = map.get(key, true);
  if (v === undefined || v === null) return undefined;
  if (isScalar(v) && v.value === null) return undefined;
  return v;
};

/** The node at a path of keys, or undefined. */
export const childAt = (map: YAMLMap, path: readonly string[]): unknown => {
  let node: unknown = map;
  for (const key of path) {
    if (!isMap(node)) return undefined;
    node = child(node, key);
  }
  return node;
};

/** The map at `key`, created when missing. Undefined when something else (a list, a string) is there. */
export const ensureMap = (doc: Document, map: YAMLMap, key: string): YAMLMap | undefined => {
  const v = child(map, key);
  if (v === undefined) {
    const created = doc.createNode({}) as YAMLMap;
    map.set(key, created);
    return created;
  }
  if (!isMap(v)) return undefined;
  // `annotations: {}` would otherwise grow into one long flow-style line.
  if (v.items.length === 0) v.flow = false;
  return v;
};

/** The list at `key`, created when missing (just before the key `before`, if given). Undefined when something else is there. */
export const ensureSeq = (doc: Document, map: YAMLMap, key: string, before?: string): YAMLSeq | undefined => {
  const v = child(map, key);
  if (v === undefined) {
    const created = doc.createNode([]) as YAMLSeq;
    const at = before === undefined || map.has(key) ? -1 : map.items.findIndex((p) => isScalar(p.key) && p.key.value === before);
    if (at === -1) map.set(key, created);
    else map.items.splice(at, 0, doc.createPair(key, created));
    return created;
  }
  if (!isSeq(v)) return undefined;
  if (v.items.length === 0) v.flow = false;
  return v;
};

/**
 * True when the subtree uses anchors or aliases. Editing a node that is shared through an alias would change
 * every place that refers to it (another container's env, say), so such a subtree is not edited at all.
 */
export const usesAnchors = (node: unknown): boolean => {
  if (!isNode(node)) return false;
  let found = false;
  visit(node, {
    Alias() {
      found = true;
      return visit.BREAK;
    },
    Node(_key, n) {
      if (isAlias(n) || n.anchor) {
        found = true;
        return visit.BREAK;
      }
      return undefined;
    },
  });
  return found;
};

/** Plain value of a node (no aliases expected: check usesAnchors first). */
export const plain = (node: unknown): unknown => (isNode(node) ? node.toJSON() : node);

/** Plain value at `path`, or undefined. */
export const plainAt = (map: YAMLMap | undefined, path: readonly string[]): unknown => {
  if (map === undefined) return undefined;
  const node = childAt(map, path);
  return node === undefined ? undefined : plain(node);
};

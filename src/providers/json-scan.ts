/*
 * Cheap looks into one SSE `data:` payload without JSON.parse: these run on every streamed chunk.
 *
 * They rely on one property of JSON: inside a string every `"` is escaped, so the byte sequence
 * `"key"` followed by `:` can only be a real key, never text a model wrote.
 */

/** A matcher for string values of any of `keys` (plain identifiers), for `stringValueBytes`. */
export const stringKeys = (...keys: string[]): RegExp => new RegExp(`"(?:${keys.join('|')})"\\s*:\\s*"`, 'g');

/** A matcher for an object value of `key` (`"usage": {`, not `"usage": null`), for `RegExp.test`. */
export const objectKey = (key: string): RegExp => new RegExp(`"${key}"\\s*:\\s*\\{`);

/**
 * UTF-8 byte length, as escaped in the payload, of every string value matched by `keys` (from `stringKeys`)
 * in `data`. Escapes (`\n`, `\u00e9`) count as written, a slight overcount on the safe side.
 */
export const stringValueBytes = (data: string, keys: RegExp): number => {
  let total = 0;
  keys.lastIndex = 0;
  while (keys.exec(data) !== null) {
    let i = keys.lastIndex;
    for (; i < data.length; i++) {
      const c = data.charCodeAt(i);
      if (c === 0x22 /* " */) break;
      if (c === 0x5c /* \ */) {
        total += 2;
        i++;
      } else total += c < 0x80 ? 1 : c < 0x800 ? 2 : c >= 0xd800 && c <= 0xdfff ? 2 : 3;
    }
    keys.lastIndex = i + 1;
  }
  return total;
};

/**
 * The few DER (X.690) encodings and reads the pod CA needs to write and inspect X.509 certificates. Hand-written
 * instead of @peculiar/x509 (issue 15): that library, with tsyringe, reflect-metadata and eleven @peculiar/asn1-*
 * packages, cost an idle sidecar ~6.5 MB, and its generic ASN.1 machinery made a leaf mint take ~12 ms. A
 * certificate is a handful of fixed structures; the signature is node:crypto's.
 */

/** Definite length, short or long form. */
const lengthOf = (n: number): Buffer => {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let rest = n; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest % 256);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
};

export const tlv = (tag: number, content: Uint8Array): Buffer => Buffer.concat([Buffer.from([tag]), lengthOf(content.length), content]);
export const sequence = (...parts: Uint8Array[]): Buffer => tlv(0x30, Buffer.concat(parts));
export const set = (...parts: Uint8Array[]): Buffer => tlv(0x31, Buffer.concat(parts));
export const boolean = (value: boolean): Buffer => tlv(0x01, Buffer.from([value ? 0xff : 0x00]));
export const octetString = (bytes: Uint8Array): Buffer => tlv(0x04, bytes);
export const NULL = Buffer.from([0x05, 0x00]);

/** A non-negative INTEGER from big-endian bytes: leading zeros dropped, a zero put back where the top bit would read as a sign. */
export const unsignedInteger = (bytes: Uint8Array): Buffer => {
  let first = 0;
  while (first < bytes.length - 1 && bytes[first] === 0) first++;
  const trimmed = bytes.length === 0 ? Buffer.from([0]) : Buffer.from(bytes.subarray(first));
  return tlv(0x02, trimmed[0]! > 0x7f ? Buffer.concat([Buffer.from([0]), trimmed]) : trimmed);
};

/** A BIT STRING whose last `unusedBits` bits are padding. */
export const bitString = (bytes: Uint8Array, unusedBits = 0): Buffer => tlv(0x03, Buffer.concat([Buffer.from([unusedBits]), bytes]));

export const objectIdentifier = (dotted: string): Buffer => {
  const arcs = dotted.split('.').map(Number);
  const out: number[] = [];
  // The first two arcs share one subidentifier (X.690 §8.19.4), which can take more than one byte (2.999).
  for (const arc of [40 * arcs[0]! + arcs[1]!, ...arcs.slice(2)]) {
    const base128 = [arc & 0x7f];
    for (let rest = Math.floor(arc / 128); rest > 0; rest = Math.floor(rest / 128)) base128.unshift(0x80 | (rest & 0x7f));
    out.push(...base128);
  }
  return tlv(0x06, Buffer.from(out));
};

/** PrintableString when the text fits its alphabet, UTF8String otherwise (what @peculiar/x509 chose too). */
export const directoryString = (text: string): Buffer =>
  /^[A-Za-z0-9 '()+,\-./:=?]*$/.test(text) ? tlv(0x13, Buffer.from(text, 'latin1')) : tlv(0x0c, Buffer.from(text, 'utf8'));

/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; seconds, `Z`, no fraction. */
export const time = (date: Date): Buffer => {
  const iso = date.toISOString(); // 2026-12-05T22:33:12.000Z
  const digits = iso.slice(0, 19).replace(/[-T:]/g, '');
  const year = date.getUTCFullYear();
  return year >= 1950 && year < 2050 ? tlv(0x17, Buffer.from(`${digits.slice(2)}Z`)) : tlv(0x18, Buffer.from(`${digits}Z`));
};

/** One element read from a DER buffer: its tag, where its content starts and where it ends. */
export interface Element {
  tag: number;
  start: number;
  contentStart: number;
  end: number;
}

/** Reads the element at `offset`; throws on anything truncated, indefinite or multi-byte-tagged (none occurs in X.509). */
export const readElement = (der: Uint8Array, offset = 0): Element => {
  const tag = der[offset];
  const first = der[offset + 1];
  if (tag === undefined || first === undefined || (tag & 0x1f) === 0x1f) throw new Error(`malformed DER at byte ${offset}`);
  let length = first;
  let contentStart = offset + 2;
  if (first & 0x80) {
    const count = first & 0x7f;
    if (count === 0 || count > 4) throw new Error(`unsupported DER length at byte ${offset}`);
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + (der[contentStart + i] ?? NaN);
    contentStart += count;
  }
  const end = contentStart + length;
  if (!(end <= der.length)) throw new Error(`truncated DER at byte ${offset}`);
  return { tag, start: offset, contentStart, end };
};

/** The elements inside a constructed element. */
export const childrenOf = (der: Uint8Array, parent: Element): Element[] => {
  const out: Element[] = [];
  for (let at = parent.contentStart; at < parent.end; ) {
    const child = readElement(der, at);
    if (child.end > parent.end) throw new Error(`DER element at byte ${at} overruns its parent`);
    out.push(child);
    at = child.end;
  }
  return out;
};

export const contentOf = (der: Uint8Array, e: Element): Buffer => Buffer.from(der.buffer, der.byteOffset + e.contentStart, e.end - e.contentStart);
/** The whole element, tag and length included. */
export const encodingOf = (der: Uint8Array, e: Element): Buffer => Buffer.from(der.buffer, der.byteOffset + e.start, e.end - e.start);

/** The dotted text of an OBJECT IDENTIFIER's content bytes. */
export const readObjectIdentifier = (content: Uint8Array): string => {
  const arcs: number[] = [];
  let value = 0;
  for (const byte of content) {
    value = value * 128 + (byte & 0x7f);
    if (byte & 0x80) continue;
    if (arcs.length === 0) arcs.push(value < 80 ? Math.floor(value / 40) : 2, value < 80 ? value % 40 : value - 80);
    else arcs.push(value);
    value = 0;
  }
  return arcs.join('.');
};

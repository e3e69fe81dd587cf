import { createHash, randomBytes, webcrypto } from 'node:crypto';
import { isIPv4 } from 'node:net';
import {
  NULL,
  bitString,
  boolean,
  childrenOf,
  contentOf,
  directoryString,
  encodingOf,
  objectIdentifier,
  octetString,
  readElement,
  readObjectIdentifier,
  sequence,
  set,
  time,
  tlv,
  unsignedInteger,
} from './der.js';

/** The X.509 object identifiers the pod CA writes or reads. */
export const OID = {
  commonName: '2.5.4.3',
  organizationName: '2.5.4.10',
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  nameConstraints: '2.5.29.30',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
} as const;

/** A Name with one attribute per RDN, in the order given (`[[OID.commonName, 'x'], [OID.organizationName, 'y']]`). */
export const nameOf = (attributes: Array<[oid: string, value: string]>): Buffer =>
  sequence(...attributes.map(([oid, value]) => set(sequence(objectIdentifier(oid), directoryString(value)))));

/** An Extension; `critical` is written only when true (DER leaves a DEFAULT FALSE out). */
export const extension = (oid: string, critical: boolean, value: Buffer): Buffer =>
  sequence(objectIdentifier(oid), ...(critical ? [boolean(true)] : []), octetString(value));

/** The 4 (IPv4) or 16 (IPv6) bytes of an IP literal; IPv6 in hex groups only (what normalizeHost gives). */
export const ipBytes = (ip: string): Buffer => {
  if (isIPv4(ip)) return Buffer.from(ip.split('.').map(Number));
  const [head = '', tail] = ip.split('::');
  const groups = (s: string) => (s === '' ? [] : s.split(':'));
  const left = groups(head);
  const right = tail === undefined ? [] : groups(tail);
  const all = [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(Number.parseInt(g, 16), i * 2));
  return out;
};

/** A GeneralName: dNSName, or iPAddress (with `prefix`, the address-and-mask form name constraints use). */
export const generalName = (kind: 'dns' | 'ip', name: string, prefix?: number): Buffer => {
  if (kind === 'dns') return tlv(0x82, Buffer.from(name, 'latin1'));
  const address = ipBytes(name);
  if (prefix === undefined) return tlv(0x87, address);
  const mask = Buffer.alloc(address.length);
  for (let bit = 0; bit < prefix; bit++) mask[bit >> 3]! |= 0x80 >> (bit & 7);
  return tlv(0x87, Buffer.concat([address, mask]));
};

/** NameConstraints (RFC 5280 §4.2.1.10): [0] permitted and [1] excluded GeneralSubtrees of bare GeneralNames. */
export const nameConstraintsValue = (permitted: Buffer[], excluded: Buffer[]): Buffer => {
  const subtrees = (tag: number, names: Buffer[]) => tlv(tag, Buffer.concat(names.map((base) => sequence(base))));
  return sequence(...(permitted.length > 0 ? [subtrees(0xa0, permitted)] : []), ...(excluded.length > 0 ? [subtrees(0xa1, excluded)] : []));
};

/** A name constraint read back, as @peculiar/x509 named its types: `dns`, `ip` (`addr/prefix`), `email`, `url`, or `other`. */
export interface ConstraintName {
  type: string;
  value: string;
}

const ipText = (bytes: Buffer): string => {
  const half = bytes.length / 2;
  const address = bytes.subarray(0, half);
  let prefix = 0;
  for (const byte of bytes.subarray(half)) for (let bit = 7; bit >= 0 && byte & (1 << bit); bit--) prefix++;
  if (half === 4) return `${[...address].join('.')}/${prefix}`;
  const groups = Array.from({ length: 8 }, (_, i) => address.readUInt16BE(i * 2).toString(16)).join(':');
  // The WHATWG URL serializer writes the RFC 5952 compressed form.
  return `${new URL(`http://[${groups}]/`).hostname.slice(1, -1)}/${prefix}`;
};

/** Reads a NameConstraints extension value: its permitted and excluded names. */
export const parseNameConstraints = (value: Buffer): { permitted: ConstraintName[]; excluded: ConstraintName[] } => {
  const top = readElement(value);
  const read = (tag: number): ConstraintName[] => {
    const subtrees = childrenOf(value, top).find((e) => e.tag === tag);
    if (subtrees === undefined) return [];
    return childrenOf(value, subtrees).map((subtree) => {
      const base = childrenOf(value, subtree)[0];
      const content = base === undefined ? Buffer.alloc(0) : contentOf(value, base);
      switch (base?.tag) {
        case 0x82:
          return { type: 'dns', value: content.toString('latin1') };
        case 0x87:
          return content.length === 8 || content.length === 32 ? { type: 'ip', value: ipText(content) } : { type: 'other', value: '' };
        case 0x81:
          return { type: 'email', value: content.toString('latin1') };
        case 0x86:
          return { type: 'url', value: content.toString('latin1') };
        default:
          return { type: 'other', value: '' }; // otherName, x400Address, directoryName...: nothing a TLS server name uses
      }
    });
  };
  return { permitted: read(0xa0), excluded: read(0xa1) };
};

/** RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits of a SubjectPublicKeyInfo. */
export const keyIdentifierOf = (spki: Buffer): Buffer => {
  const [, bits] = childrenOf(spki, readElement(spki));
  if (bits === undefined) throw new Error('SubjectPublicKeyInfo without a key');
  return createHash('sha1').update(contentOf(spki, bits).subarray(1)).digest();
};

/** What a CA key signs with: the key, and the hash for ECDSA (RSA keys carry theirs from import). */
export interface Signer {
  key: webcrypto.CryptoKey;
  hash: 'SHA-256' | 'SHA-384';
}

const signatureAlgorithmOf = (signer: Signer): Buffer =>
  signer.key.algorithm.name === 'ECDSA'
    ? sequence(objectIdentifier(signer.hash === 'SHA-384' ? '1.2.840.10045.4.3.3' : '1.2.840.10045.4.3.2'))
    : sequence(objectIdentifier('1.2.840.113549.1.1.11'), NULL); // sha256WithRSAEncryption, parameters NULL

export interface CertificateFields {
  /** DER Names. */
  issuer: Buffer;
  subject: Buffer;
  notBefore: Date;
  notAfter: Date;
  /** DER SubjectPublicKeyInfo. */
  spki: Buffer;
  /** DER Extensions, from `extension()`. */
  extensions: Buffer[];
}

/** A signed v3 certificate, DER, with a random positive 128-bit serial. */
export const signCertificate = async (fields: CertificateFields, signer: Signer): Promise<Buffer> => {
  const algorithm = signatureAlgorithmOf(signer);
  const tbs = sequence(
    tlv(0xa0, unsignedInteger(Buffer.from([2]))), // version v3
    unsignedInteger(randomBytes(16)),
    algorithm,
    fields.issuer,
    sequence(time(fields.notBefore), time(fields.notAfter)),
    fields.subject,
    fields.spki,
    tlv(0xa3, sequence(...fields.extensions)),
  );
  const ecdsa = signer.key.algorithm.name === 'ECDSA';
  const raw = Buffer.from(await webcrypto.subtle.sign(ecdsa ? { name: 'ECDSA', hash: signer.hash } : { name: 'RSASSA-PKCS1-v1_5' }, signer.key, tbs));
  // WebCrypto writes an ECDSA signature as r || s (IEEE P1363); X.509 wants SEQUENCE { r INTEGER, s INTEGER }.
  const signature = ecdsa ? sequence(unsignedInteger(raw.subarray(0, raw.length / 2)), unsignedInteger(raw.subarray(raw.length / 2))) : raw;
  return sequence(tbs, algorithm, bitString(signature));
};

/** What the pod CA reads from a certificate it loads: its subject as written, its key, its extensions by OID. */
export interface CertificateParts {
  subjectName: Buffer;
  spki: Buffer;
  extensions: Map<string, Buffer>;
}

export const readCertificate = (certDer: Buffer): CertificateParts => {
  const [tbsElement] = childrenOf(certDer, readElement(certDer));
  if (tbsElement === undefined) throw new Error('empty certificate');
  const tbs = childrenOf(certDer, tbsElement);
  const first = tbs[0]?.tag === 0xa0 ? 1 : 0; // [0] version is absent in a v1 certificate
  const subject = tbs[first + 4];
  const spki = tbs[first + 5];
  if (subject === undefined || spki === undefined) throw new Error('truncated TBSCertificate');
  const extensions = new Map<string, Buffer>();
  const wrapper = tbs.find((e) => e.tag === 0xa3);
  const list = wrapper === undefined ? undefined : childrenOf(certDer, wrapper)[0];
  for (const ext of list === undefined ? [] : childrenOf(certDer, list)) {
    const parts = childrenOf(certDer, ext);
    const oid = parts[0];
    const value = parts.at(-1);
    if (oid?.tag === 0x06 && value?.tag === 0x04) extensions.set(readObjectIdentifier(contentOf(certDer, oid)), contentOf(certDer, value));
  }
  return { subjectName: encodingOf(certDer, subject), spki: encodingOf(certDer, spki), extensions };
};

export const pemOf = (certDer: Buffer): string =>
  `-----BEGIN CERTIFICATE-----\n${certDer.toString('base64').replace(/(.{64})(?=.)/g, '$1\n')}\n-----END CERTIFICATE-----`;

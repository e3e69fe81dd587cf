// Must stay the first import: @peculiar/x509 throws at import time without a Reflect metadata API.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { AsnConvert } from '@peculiar/asn1-schema';
import {
  GeneralName as AsnGeneralName,
  GeneralSubtree,
  GeneralSubtrees,
  NameConstraints,
  id_ce_nameConstraints,
} from '@peculiar/asn1-x509';
import { KeyObject, X509Certificate as NodeX509Certificate, createPrivateKey, randomBytes, webcrypto } from 'node:crypto';
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { domainToASCII } from 'node:url';
import { LRUCache } from 'lru-cache';

/** Options of the pod-local interception CA. */
export interface PodCaOptions {
  /**
   * PEM file of a CA certificate to load instead of generating one (a Kubernetes Secret shared by a fleet).
   * Set both `certFile` and `keyFile`, or neither. Paths already resolved.
   */
  certFile?: string;
  /** PEM file of the private key of `certFile`: EC P-256/P-384 or RSA (PKCS#8, SEC1 or PKCS#1), unencrypted. */
  keyFile?: string;
  /** Validity of a generated CA, days (default chosen by the caller, e.g. 365). Ignored for a loaded CA. */
  validityDays: number;
  /** Lifetime of a leaf certificate, hours (≤ 24 typical); a leaf never outlives the CA. */
  leafValidityHours: number;
  /** Most leaf contexts kept (LRU). */
  maxLeaves: number;
  /**
   * The only names leaves may be issued for: DNS names (lower-case) and IP literals (v4 `127.0.0.1`,
   * v6 `::1` without brackets). A generated CA carries them as X.509 name constraints.
   */
  hosts: string[];
  /** Clock in ms since the epoch; injected for tests. Default `Date.now`. */
  now?: () => number;
}

/** What a PodCa is, for logs, the admin API and the trust files. */
export interface CaInfo {
  source: 'generated' | 'file';
  /** Subject DN, RFC 4514 style (`CN=Fusebox pod CA 1a2b3c4d, O=Fusebox`). */
  subject: string;
  /** SHA-256 of the DER certificate, upper-case hex with colons, as `openssl x509 -fingerprint -sha256` prints it. */
  fingerprintSha256: string;
  notBefore: Date;
  notAfter: Date;
  /**
   * Permitted name constraints of the CA, as `DNS:api.example.com` or `IP:10.0.0.1/32` (`IP:::1/128` for v6).
   * Empty for a loaded CA without name constraints.
   */
  permitted: string[];
  /** Excluded name constraints, same notation (a generated CA excludes every name type it does not permit). */
  excluded: string[];
  /** The CA certificate, PEM. */
  pem: string;
}

/** Stable codes of CaError; part of the API. */
export type CaErrorCode =
  | 'CA_INVALID'
  | 'CA_EXPIRED'
  | 'CA_UNREADABLE'
  | 'CA_WRITE_FAILED'
  | 'OPTIONS_INVALID'
  | 'LEAF_NOT_ALLOWED'
  | 'LEAF_MINT_FAILED';

/** Every failure of the CA module; the message says what to do about it. */
export class CaError extends Error {
  constructor(
    readonly code: CaErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'CaError';
  }
}

const MINUTE_MS = 60_000;
const HOUR_MS = 60 * MINUTE_MS;
const DAY_MS = 24 * HOUR_MS;
/**
 * notBefore is set this far back: a client whose clock runs a little behind ours would otherwise reject a
 * certificate minted a moment ago as "not yet valid".
 */
const CLOCK_SKEW_MS = 5 * MINUTE_MS;
/** A cached leaf is re-minted once this share of its life has passed, so no client ever sees it near expiry. */
const LEAF_REFRESH_AT = 0.5;
/** RFC 5280 upper bound of a commonName (ub-common-name). */
const MAX_CN_LENGTH = 64;

const EC_P256 = { name: 'ECDSA', namedCurve: 'P-256' } as const;

/** A host after normalization: the form leaves, constraints and the allow-list all use. */
export interface NormalizedHost {
  kind: 'dns' | 'ip';
  /** Lower-case A-label DNS name, or IP literal (v6 compressed, no brackets). */
  name: string;
}

const DNS_LABEL = /^(?!-)[a-z0-9_-]{1,63}(?<!-)$/;

/**
 * Turns what a client or the config says into the one form we compare: lower-case ASCII DNS names without a
 * trailing dot, IPv6 without brackets and in its canonical compressed form. `undefined` for anything else
 * (wildcards, zone ids, IPv4 shorthand like `127.1`).
 */
export function normalizeHost(raw: string): NormalizedHost | undefined {
  let s = raw.toLowerCase();
  if (s.startsWith('[') && s.endsWith(']')) s = s.slice(1, -1);
  if (isIPv4(s)) return { kind: 'ip', name: s };
  if (isIPv6(s)) {
    // The WHATWG URL serializer gives the RFC 5952 form (`::ffff:7f00:1` for `::ffff:127.0.0.1`), so equal
    // addresses compare equal and the ASN.1 encoder, which reads hex groups only, gets no dotted quad.
    try {
      return { kind: 'ip', name: new URL(`http://[${s}]/`).hostname.slice(1, -1) };
    } catch {
      return undefined; // a zone id (`fe80::1%eth0`) is not an address a certificate can name
    }
  }
  if (s.endsWith('.')) s = s.slice(0, -1);
  const ascii = domainToASCII(s);
  // domainToASCII reads `127.1` and `0x7f.1` as IPv4; a certificate for them would name 127.0.0.1, not them.
  if (ascii === '' || isIPv4(ascii) || ascii.length > 253) return undefined;
  if (!ascii.split('.').every((label) => DNS_LABEL.test(label))) return undefined;
  return { kind: 'dns', name: ascii };
}

const prefixOf = (h: NormalizedHost): string => (h.kind === 'dns' ? `DNS:${h.name}` : `IP:${h.name}/${isIPv4(h.name) ? 32 : 128}`);

/**
 * The name constraints extension (RFC 5280 §4.2.1.10) of a generated CA: a leaked pod CA key then signs
 * nothing a client would accept beyond these hosts. A permitted dNSName also permits its subdomains (the
 * RFC's "adding zero or more labels to the left-hand side").
 *
 * Hazard: a constraint binds only the name types it lists. With DNS hosts only, an IP SAN would pass
 * unchecked (and the reverse), so a type with nothing permitted is excluded whole: an empty dNSName matches
 * every DNS name, 0.0.0.0/0 and ::/0 every address. This is what the CA/Browser Forum Baseline Requirements
 * (§7.1.2.5.2, technically constrained CAs) demand for the same reason.
 */
function nameConstraintsFor(hosts: NormalizedHost[]): { extension: x509.Extension; permitted: string[]; excluded: string[] } {
  const permitted = hosts.map((h) =>
    h.kind === 'dns'
      ? new AsnGeneralName({ dNSName: h.name })
      : new AsnGeneralName({ iPAddress: `${h.name}/${isIPv4(h.name) ? 32 : 128}` }),
  );
  const excluded: AsnGeneralName[] = [];
  const excludedText: string[] = [];
  if (!hosts.some((h) => h.kind === 'dns')) {
    excluded.push(new AsnGeneralName({ dNSName: '' }));
    excludedText.push('DNS:');
  }
  if (!hosts.some((h) => h.kind === 'ip')) {
    excluded.push(new AsnGeneralName({ iPAddress: '0.0.0.0/0' }), new AsnGeneralName({ iPAddress: '::/0' }));
    excludedText.push('IP:0.0.0.0/0', 'IP:::/0');
  }
  const subtrees = (names: AsnGeneralName[]) => new GeneralSubtrees(names.map((base) => new GeneralSubtree({ base })));
  const value = new NameConstraints({
    permittedSubtrees: subtrees(permitted),
    ...(excluded.length > 0 ? { excludedSubtrees: subtrees(excluded) } : {}),
  });
  // RFC 5280: "Conforming CAs MUST mark this extension as critical."
  return {
    extension: new x509.Extension(id_ce_nameConstraints, true, AsnConvert.serialize(value)),
    permitted: hosts.map(prefixOf),
    excluded: excludedText,
  };
}

/**
 * The name constraints extension a generated CA carries for `hosts` (exported so tests can build a CA whose
 * key they hold with exactly our encoding, and sign rogue leaves with it).
 */
export function nameConstraintsExtension(hosts: string[]): x509.Extension {
  return nameConstraintsFor(
    hosts.map((raw) => {
      const h = normalizeHost(raw);
      if (h === undefined) throw new CaError('OPTIONS_INVALID', `'${raw}' is neither a DNS name nor an IP literal`, { host: raw });
      return h;
    }),
  ).extension;
}

/** Name constraints of a loaded CA, in CaInfo notation, plus a matcher to check our hosts against them. */
function readNameConstraints(cert: x509.X509Certificate): {
  permitted: string[];
  excluded: string[];
  allows: (h: NormalizedHost) => boolean;
} {
  const ext = cert.getExtension(id_ce_nameConstraints);
  if (ext === null) return { permitted: [], excluded: [], allows: () => true };
  const nc = AsnConvert.parse(ext.value, NameConstraints);
  const read = (subtrees: GeneralSubtrees | undefined) =>
    (subtrees ?? []).map((s) => {
      try {
        const g = new x509.GeneralName(s.base);
        return { type: g.type, value: g.value };
      } catch {
        return { type: 'other', value: '' }; // otherName, x400Address...: nothing a TLS server name uses
      }
    });
  const permitted = read(nc.permittedSubtrees);
  const excluded = read(nc.excludedSubtrees);
  const label: Record<string, string> = { dns: 'DNS', ip: 'IP' };
  const text = (n: { type: string; value: string }) => `${label[n.type] ?? n.type.toUpperCase()}:${n.value}`;
  const matches = (h: NormalizedHost, n: { type: string; value: string }): boolean => {
    if (h.kind === 'dns' && n.type === 'dns') {
      const base = n.value.toLowerCase();
      if (base === '') return true;
      if (base.startsWith('.')) return h.name.endsWith(base);
      return h.name === base || h.name.endsWith(`.${base}`);
    }
    if (h.kind === 'ip' && n.type === 'ip') {
      const [addr = '', bits = ''] = n.value.split('/');
      const family = isIPv4(h.name) ? 'ipv4' : 'ipv6';
      if ((family === 'ipv4') !== isIPv4(addr)) return false;
      const list = new BlockList();
      try {
        list.addSubnet(addr, Number(bits), family);
      } catch {
        return false;
      }
      return list.check(h.name, family);
    }
    return false;
  };
  const allows = (h: NormalizedHost): boolean => {
    if (excluded.some((n) => matches(h, n))) return false;
    const sameType = permitted.filter((n) => n.type === h.kind);
    return sameType.length === 0 || sameType.some((n) => matches(h, n));
  };
  return { permitted: permitted.map(text), excluded: excluded.map(text), allows };
}

interface SigningAlgorithm {
  importAlg: webcrypto.EcKeyImportParams | webcrypto.RsaHashedImportParams;
  hash: string;
}

/** How to sign with a loaded CA key, or a refusal naming the key types we support. */
function signingAlgorithmFor(key: KeyObject, keyFile: string): SigningAlgorithm {
  const details = key.asymmetricKeyDetails ?? {};
  if (key.asymmetricKeyType === 'ec') {
    if (details.namedCurve === 'prime256v1') return { importAlg: { name: 'ECDSA', namedCurve: 'P-256' }, hash: 'SHA-256' };
    if (details.namedCurve === 'secp384r1') return { importAlg: { name: 'ECDSA', namedCurve: 'P-384' }, hash: 'SHA-384' };
  }
  if (key.asymmetricKeyType === 'rsa') {
    return { importAlg: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, hash: 'SHA-256' };
  }
  const what = key.asymmetricKeyType === 'ec' ? `EC ${details.namedCurve ?? 'unknown curve'}` : (key.asymmetricKeyType ?? 'unknown');
  throw new CaError('CA_INVALID', `CA key ${keyFile} is ${what}: Fusebox signs with EC P-256, EC P-384 or RSA keys only`, {
    keyFile,
  });
}

const readPem = async (file: string, what: string): Promise<string> => {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    throw new CaError('CA_UNREADABLE', `cannot read the CA ${what} ${file}: ${(err as Error).message}`, { path: file }, { cause: err });
  }
};

const iso = (d: Date) => d.toISOString();

/** What both ways of getting a CA hand to the PodCa. */
interface CaMaterial {
  source: CaInfo['source'];
  cert: x509.X509Certificate;
  signingKey: webcrypto.CryptoKey;
  signingHash: string;
  permitted: string[];
  excluded: string[];
}

async function generateCa(hosts: NormalizedHost[], validityDays: number, now: number): Promise<CaMaterial> {
  // Not extractable: the generated CA key lives in this process only and can never be exported or written.
  const keys = (await webcrypto.subtle.generateKey(EC_P256, false, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const nc = nameConstraintsFor(hosts);
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      name: [{ CN: [`Fusebox pod CA ${randomBytes(4).toString('hex')}`] }, { O: ['Fusebox'] }],
      keys,
      notBefore: new Date(now - CLOCK_SKEW_MS),
      notAfter: new Date(now + validityDays * DAY_MS),
      signingAlgorithm: { ...EC_P256, hash: 'SHA-256' },
      extensions: [
        // pathlen 0: this CA signs leaves only, never another CA.
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, webcrypto),
        nc.extension,
      ],
    },
    webcrypto,
  );
  return { source: 'generated', cert, signingKey: keys.privateKey, signingHash: 'SHA-256', permitted: nc.permitted, excluded: nc.excluded };
}

async function loadCa(certFile: string, keyFile: string, hosts: NormalizedHost[], now: number): Promise<CaMaterial> {
  const [certPem, keyPem] = await Promise.all([readPem(certFile, 'certificate'), readPem(keyFile, 'key')]);
  const invalid = (message: string, details: Record<string, unknown> = {}, cause?: unknown) =>
    new CaError('CA_INVALID', message, { certFile, keyFile, ...details }, cause === undefined ? undefined : { cause });

  const blocks = certPem.match(/-----BEGIN CERTIFICATE-----/g)?.length ?? 0;
  // The trust files we write hold this certificate alone, and OpenSSL accepts only a self-signed trust anchor
  // (no X509_V_FLAG_PARTIAL_CHAIN), so an intermediate with its chain cannot serve as the pod CA.
  if (blocks !== 1) throw invalid(`CA certificate ${certFile} holds ${blocks} PEM certificates: it must hold the CA certificate alone`);
  let nodeCert: NodeX509Certificate;
  let cert: x509.X509Certificate;
  try {
    nodeCert = new NodeX509Certificate(certPem);
    cert = new x509.X509Certificate(nodeCert.raw);
  } catch (err) {
    throw invalid(`CA certificate ${certFile} is not a valid PEM X.509 certificate: ${(err as Error).message}`, {}, err);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw invalid(
      `CA key ${keyFile} is not a readable unencrypted PEM private key (PKCS#8, SEC1 or PKCS#1): ${(err as Error).message}`,
      {},
      err,
    );
  }

  if (!nodeCert.ca) throw invalid(`${certFile} is not a CA certificate (basicConstraints cA is not true): it cannot sign leaves`);
  const keyUsage = cert.getExtension(x509.KeyUsagesExtension);
  if (keyUsage !== null && (keyUsage.usages & x509.KeyUsageFlags.keyCertSign) === 0) {
    throw invalid(`CA certificate ${certFile} has a keyUsage without keyCertSign: clients would reject every leaf it signs`);
  }
  if (!nodeCert.checkIssued(nodeCert) || !nodeCert.verify(nodeCert.publicKey)) {
    throw invalid(`CA certificate ${certFile} is not self-signed: the pod CA must be a root that clients can trust alone`);
  }
  if (!nodeCert.checkPrivateKey(key)) {
    throw invalid(`CA key ${keyFile} does not match the certificate ${certFile}: check that both come from the same Secret`);
  }
  const { importAlg, hash } = signingAlgorithmFor(key, keyFile);

  if (cert.notAfter.getTime() <= now) {
    throw new CaError('CA_EXPIRED', `CA certificate ${certFile} expired on ${iso(cert.notAfter)}: renew the Secret`, {
      certFile,
      notAfter: iso(cert.notAfter),
    });
  }
  if (cert.notBefore.getTime() > now) {
    throw invalid(`CA certificate ${certFile} is not valid before ${iso(cert.notBefore)}: check this machine's clock`, {
      notBefore: iso(cert.notBefore),
    });
  }

  const nc = readNameConstraints(cert);
  const outside = hosts.filter((h) => !nc.allows(h)).map((h) => h.name);
  if (outside.length > 0) {
    // Fail at start rather than at every handshake: clients reject a leaf outside the CA's constraints.
    throw invalid(
      `the name constraints of CA ${certFile} ` +
        `(permitted: ${nc.permitted.join(', ') || 'none'}; excluded: ${nc.excluded.join(', ') || 'none'}) ` +
        `do not cover ${outside.join(', ')}: remove them from the intercepted hosts or issue a CA that permits them`,
      { outside },
    );
  }
  return {
    source: 'file',
    cert,
    signingKey: key.toCryptoKey(importAlg, false, ['sign']),
    signingHash: hash,
    permitted: nc.permitted,
    excluded: nc.excluded,
  };
}

function checkOptions(opts: PodCaOptions): NormalizedHost[] {
  const problems: string[] = [];
  if ((opts.certFile === undefined) !== (opts.keyFile === undefined)) {
    problems.push('certFile and keyFile go together: set both to load a CA, or neither to generate one');
  }
  if (!(Number.isFinite(opts.validityDays) && opts.validityDays > 0)) problems.push(`validityDays must be > 0 (got ${opts.validityDays})`);
  if (!(Number.isFinite(opts.leafValidityHours) && opts.leafValidityHours > 0)) {
    problems.push(`leafValidityHours must be > 0 (got ${opts.leafValidityHours})`);
  }
  if (!(Number.isInteger(opts.maxLeaves) && opts.maxLeaves >= 1)) problems.push(`maxLeaves must be an integer ≥ 1 (got ${opts.maxLeaves})`);
  if (opts.hosts.length === 0) problems.push('hosts is empty: list the hosts whose TLS Fusebox terminates');
  const hosts: NormalizedHost[] = [];
  opts.hosts.forEach((raw, i) => {
    const h = normalizeHost(raw);
    if (h === undefined) problems.push(`hosts[${i}] '${raw}' is neither a DNS name nor an IP literal (wildcards are not supported)`);
    else if (!hosts.some((x) => x.name === h.name)) hosts.push(h);
  });
  if (problems.length > 0) throw new CaError('OPTIONS_INVALID', `interception CA options: ${problems.join('; ')}`, { problems });
  return hosts;
}

/** What every leaf of one PodCa shares. */
interface LeafTemplate {
  /** Encoded once: handing @peculiar/x509 a CryptoKey makes it export the SPKI again at every mint. */
  publicKey: x509.PublicKey;
  /** PKCS#8 PEM of the shared leaf key, for OpenSSL (tls.createSecureContext). */
  keyPem: string;
  /** basicConstraints, keyUsage, EKU serverAuth, AKI, SKI. */
  extensions: x509.Extension[];
}

interface CachedLeaf {
  context: tls.SecureContext;
  /** On our clock (`now`), not lru-cache's performance.now, so tests can move time. */
  refreshAt: number;
}

/**
 * The pod-local CA that signs the leaf certificates Fusebox presents inside intercepted CONNECT tunnels.
 * Build with `PodCa.create`; the tunnel code asks `contextFor(host)` for each handshake.
 */
export class PodCa {
  /** Called after each mint with its duration in ms and the host (for a histogram). Errors it throws are ignored. */
  onMint?: (ms: number, host: string) => void;

  private readonly cache: LRUCache<string, CachedLeaf>;
  private readonly minting = new Map<string, Promise<tls.SecureContext>>();
  private bundle: string | undefined;

  private constructor(
    readonly info: CaInfo,
    private readonly ca: CaMaterial,
    private readonly allowed: ReadonlyMap<string, NormalizedHost>,
    private readonly leaf: LeafTemplate,
    private readonly leafValidityMs: number,
    maxLeaves: number,
    private readonly now: () => number,
  ) {
    this.cache = new LRUCache({ max: maxLeaves });
  }

  /** Loads (certFile + keyFile) or generates the CA. Throws a CaError whose message says what to fix. */
  static async create(opts: PodCaOptions): Promise<PodCa> {
    const hosts = checkOptions(opts);
    const now = opts.now ?? Date.now;
    const ca =
      opts.certFile !== undefined && opts.keyFile !== undefined
        ? await loadCa(opts.certFile, opts.keyFile, hosts, now())
        : await generateCa(hosts, opts.validityDays, now());

    // One key for every leaf, made once per PodCa (mitmproxy does the same), for the mint cost: a fresh key per
    // leaf would add a key generation and a PEM export to every first handshake with a host. Separate keys
    // would protect nothing, as they would all sit in this process beside the CA key.
    const leafKeys = (await webcrypto.subtle.generateKey(EC_P256, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const leafKeyPem = KeyObject.from(leafKeys.privateKey).export({ type: 'pkcs8', format: 'pem' }).toString();

    // The AKI must repeat the CA's own SKI: a loaded CA may have derived it by another method than ours.
    const caSki = ca.cert.getExtension(x509.SubjectKeyIdentifierExtension);
    const aki =
      caSki !== null
        ? new x509.AuthorityKeyIdentifierExtension(caSki.keyId, false)
        : await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey, false, webcrypto);
    // Everything but the SAN is the same in every leaf: encoded once here, not at each mint.
    const leafExtensions = [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
      aki,
      await x509.SubjectKeyIdentifierExtension.create(leafKeys.publicKey, false, webcrypto),
    ];

    const pem = ca.cert.toString('pem');
    const info: CaInfo = {
      source: ca.source,
      subject: ca.cert.subject,
      fingerprintSha256: new NodeX509Certificate(pem).fingerprint256,
      notBefore: ca.cert.notBefore,
      notAfter: ca.cert.notAfter,
      permitted: ca.permitted,
      excluded: ca.excluded,
      pem,
    };
    return new PodCa(
      info,
      ca,
      new Map(hosts.map((h) => [h.name, h])),
      { publicKey: await x509.PublicKey.create(leafKeys.publicKey, webcrypto), keyPem: leafKeyPem, extensions: leafExtensions },
      opts.leafValidityHours * HOUR_MS,
      opts.maxLeaves,
      now,
    );
  }

  /**
   * A tls.SecureContext for `host` (DNS name or IP literal, `[::1]` or `::1`), minted on first use and cached;
   * concurrent first calls for one host mint once. Rejects with LEAF_NOT_ALLOWED for a host not in `hosts`,
   * CA_EXPIRED once the CA has expired.
   */
  async contextFor(host: string): Promise<tls.SecureContext> {
    const h = normalizeHost(host);
    const allowed = h === undefined ? undefined : this.allowed.get(h.name);
    if (allowed === undefined) {
      throw new CaError('LEAF_NOT_ALLOWED', `no certificate for '${host}': it is not one of the intercepted hosts`, { host });
    }
    const cached = this.cache.get(allowed.name);
    if (cached !== undefined && this.now() < cached.refreshAt) return cached.context;
    const pending = this.minting.get(allowed.name);
    if (pending !== undefined) return pending;
    const minted = this.mint(allowed).finally(() => this.minting.delete(allowed.name));
    this.minting.set(allowed.name, minted);
    return minted;
  }

  /** Leaf contexts in the cache now (some may be due for re-minting). */
  get leavesCached(): number {
    return this.cache.size;
  }

  /** Days until the CA expires (fractional; negative once expired), from `now`. */
  daysLeft(): number {
    return (this.info.notAfter.getTime() - this.now()) / DAY_MS;
  }

  /**
   * System roots + this CA, PEM: for SSL_CERT_FILE / REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE. OpenSSL-based
   * runtimes read one whole bundle from those and drop their default roots, so the bundle must carry the
   * public roots too, or every non-intercepted HTTPS call of the agent would fail.
   */
  bundlePem(): string {
    if (this.bundle === undefined) {
      const seen = new Set<string>();
      const roots: string[] = [];
      // Both lists come from Node's own PEM writer, so the same certificate has the same text in either.
      for (const pem of [...tls.getCACertificates('bundled'), ...tls.getCACertificates('system')]) {
        const key = pem.replace(/\s+/g, '');
        if (seen.has(key)) continue;
        seen.add(key);
        roots.push(pem.trim());
      }
      const ours = `# Fusebox pod CA: ${this.info.subject}, SHA-256 ${this.info.fingerprintSha256}\n${this.info.pem.trim()}`;
      this.bundle = `${[...roots, ours].join('\n')}\n`;
    }
    return this.bundle;
  }

  /**
   * Writes `ca.crt` (this CA alone, for NODE_EXTRA_CA_CERTS) and `ca-bundle.crt` (bundlePem) into `dir`,
   * creating it if missing. Each file is written to a temporary name and renamed, so an agent container
   * reading the shared volume never sees half a file. Mode 0644: the agent runs as another user.
   */
  async writeFiles(dir: string): Promise<{ certFile: string; bundleFile: string }> {
    try {
      await mkdir(dir, { recursive: true });
    } catch (err) {
      const message = `cannot create the CA directory ${dir}: ${(err as Error).message}`;
      throw new CaError('CA_WRITE_FAILED', message, { path: dir }, { cause: err });
    }
    const certFile = join(dir, 'ca.crt');
    const bundleFile = join(dir, 'ca-bundle.crt');
    await writeAtomically(certFile, `${this.info.pem.trim()}\n`);
    await writeAtomically(bundleFile, this.bundlePem());
    return { certFile, bundleFile };
  }

  private async mint(host: NormalizedHost): Promise<tls.SecureContext> {
    const started = performance.now();
    const now = this.now();
    const caNotAfter = this.info.notAfter.getTime();
    if (now >= caNotAfter) {
      const message = `the interception CA expired on ${iso(this.info.notAfter)}: restart Fusebox or renew the CA Secret`;
      throw new CaError('CA_EXPIRED', message, { host: host.name, notAfter: iso(this.info.notAfter) });
    }
    const notAfter = Math.min(now + this.leafValidityMs, caNotAfter);
    let context: tls.SecureContext;
    try {
      const leaf = await x509.X509CertificateGenerator.create(
        {
          // No CN for an IP: OpenSSL checks a CN that looks like a host name against the CA's DNS constraints,
          // and `127.0.0.1` would violate them. Clients match the SAN; the CN is for people reading s_client.
          subject:
            host.kind === 'dns' && host.name.length <= MAX_CN_LENGTH ? [{ CN: [host.name] }, { O: ['Fusebox'] }] : [{ O: ['Fusebox'] }],
          issuer: this.ca.cert.subjectName,
          publicKey: this.leaf.publicKey,
          signingKey: this.ca.signingKey,
          signingAlgorithm: { name: this.ca.signingKey.algorithm.name, hash: this.ca.signingHash },
          notBefore: new Date(now - CLOCK_SKEW_MS),
          notAfter: new Date(notAfter),
          extensions: [...this.leaf.extensions, new x509.SubjectAlternativeNameExtension([{ type: host.kind, value: host.name }], false)],
        },
        webcrypto,
      );
      context = tls.createSecureContext({ key: this.leaf.keyPem, cert: `${leaf.toString('pem')}\n${this.info.pem}` });
    } catch (err) {
      const message = `cannot mint a certificate for '${host.name}': ${(err as Error).message}`;
      throw new CaError('LEAF_MINT_FAILED', message, { host: host.name }, { cause: err });
    }
    this.cache.set(host.name, { context, refreshAt: now + (notAfter - now) * LEAF_REFRESH_AT });
    const ms = performance.now() - started;
    try {
      this.onMint?.(ms, host.name);
    } catch {
      // A metrics hook must not fail a handshake.
    }
    return context;
  }
}

async function writeAtomically(file: string, content: string): Promise<void> {
  // Same directory as the target: rename(2) is atomic only within one filesystem.
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(tmp, content, { mode: 0o644, flag: 'wx' });
    await chmod(tmp, 0o644); // writeFile's mode is cut by the umask
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw new CaError('CA_WRITE_FAILED', `cannot write ${file}: ${(err as Error).message}`, { path: file }, { cause: err });
  }
}

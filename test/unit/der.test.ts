import { execFileSync } from 'node:child_process';
import { X509Certificate, webcrypto } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { OID, extension, generalName, ipBytes, nameConstraintsValue, nameOf, pemOf, readCertificate, parseNameConstraints, signCertificate } from '../../src/intercept/certificate.js';
import { childrenOf, contentOf, objectIdentifier, octetString, readElement, readObjectIdentifier, sequence, time } from '../../src/intercept/der.js';

describe('DER encoding (src/intercept/der.ts)', () => {
  it('writes short and long lengths, and reads them back', () => {
    for (const n of [0, 1, 127, 128, 255, 256, 65_535, 65_536]) {
      const encoded = octetString(Buffer.alloc(n, 7));
      const e = readElement(encoded);
      expect([e.tag, e.end - e.contentStart, e.end]).toEqual([0x04, n, encoded.length]);
    }
    expect(octetString(Buffer.alloc(200)).subarray(0, 3)).toEqual(Buffer.from([0x04, 0x81, 200]));
    expect(() => readElement(Buffer.from([0x04, 0x05, 1, 2]))).toThrow(/truncated/);
  });

  it('writes object identifiers as X.690 does (multi-byte arcs) and reads them back', () => {
    expect(objectIdentifier('1.2.840.10045.4.3.2').toString('hex')).toBe('06082a8648ce3d040302');
    for (const oid of ['2.5.29.30', '1.3.6.1.5.5.7.3.1', '1.2.840.113549.1.1.11', '2.999.3']) {
      const encoded = objectIdentifier(oid);
      expect(readObjectIdentifier(contentOf(encoded, readElement(encoded)))).toBe(oid);
    }
  });

  it('writes UTCTime through 2049 and GeneralizedTime from 2050 (RFC 5280 §4.1.2.5)', () => {
    expect(time(new Date('2049-12-31T23:59:59.999Z')).toString('latin1').slice(2)).toBe('491231235959Z');
    expect(time(new Date('2049-12-31T23:59:59Z'))[0]).toBe(0x17);
    expect(time(new Date('2050-01-01T00:00:00Z')).toString('latin1').slice(2)).toBe('20500101000000Z');
    expect(time(new Date('2050-01-01T00:00:00Z'))[0]).toBe(0x18);
  });

  it('encodes IPv6 literals in their compressed forms, and name constraints read back as written', () => {
    expect(ipBytes('::1').toString('hex')).toBe(`${'0'.repeat(30)}01`);
    expect(ipBytes('2001:db8::8:1').toString('hex')).toBe('20010db8000000000000000000080001');
    expect(ipBytes('10.1.2.3').toString('hex')).toBe('0a010203');
    const value = nameConstraintsValue(
      [generalName('dns', 'api.example.test'), generalName('ip', '10.0.0.0', 8), generalName('ip', '2001:db8::', 32)],
      [generalName('dns', '')],
    );
    expect(parseNameConstraints(value)).toEqual({
      permitted: [
        { type: 'dns', value: 'api.example.test' },
        { type: 'ip', value: '10.0.0.0/8' },
        { type: 'ip', value: '2001:db8::/32' },
      ],
      excluded: [{ type: 'dns', value: '' }],
    });
  });

  it('a certificate signed with a P-384 key, dated past 2049, reads the same in OpenSSL, Node and readCertificate', async () => {
    const keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, false, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const spki = Buffer.from(await webcrypto.subtle.exportKey('spki', keys.publicKey));
    // A UTF8String common name (the `é` is outside PrintableString) and a long-form length throughout.
    const name = nameOf([
      [OID.commonName, 'Fusébox test'],
      [OID.organizationName, 'Fusebox'],
    ]);
    const der = await signCertificate(
      {
        issuer: name,
        subject: name,
        notBefore: new Date('2049-06-01T00:00:00Z'),
        notAfter: new Date('2051-06-01T00:00:00Z'),
        spki,
        extensions: [extension(OID.subjectAltName, false, sequence(generalName('ip', '10.1.2.3')))],
      },
      { key: keys.privateKey, hash: 'SHA-384' },
    );
    const cert = new X509Certificate(der);
    expect(cert.verify(cert.publicKey)).toBe(true);
    expect(cert.subject).toBe('CN=Fusébox test\nO=Fusebox');
    expect(cert.subjectAltName).toBe('IP Address:10.1.2.3');
    expect(cert.validToDate.toISOString()).toBe('2051-06-01T00:00:00.000Z');
    const parts = readCertificate(der);
    expect(parts.subjectName).toEqual(name);
    expect(parts.spki).toEqual(spki);
    expect([...parts.extensions.keys()]).toEqual([OID.subjectAltName]);
    const text = execFileSync('openssl', ['x509', '-noout', '-text'], { input: pemOf(der), encoding: 'utf8' });
    expect(text).toContain('Signature Algorithm: ecdsa-with-SHA384');
    expect(text).toContain('Not After : Jun  1 00:00:00 2051 GMT');
    expect(childrenOf(der, readElement(der))).toHaveLength(3);
  });
});

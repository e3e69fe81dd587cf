/**
 * The smallest Reflect metadata API that lets `@peculiar/x509` load.
 *
 * Why this exists: @peculiar/x509 wires its algorithm providers with tsyringe, and tsyringe throws at import
 * time ("tsyringe requires a reflect polyfill") unless `Reflect.getMetadata` exists. The usual polyfill, the
 * `reflect-metadata` package, is not a dependency of ours. tsyringe calls only `getMetadata`,
 * `getOwnMetadata` and `defineMetadata`, and @peculiar/x509 ships compiled without `design:paramtypes`, so a
 * WeakMap per target is all it needs. If `reflect-metadata` (or another polyfill) is already installed,
 * this module leaves it alone.
 *
 * Hazard: import this module before `@peculiar/x509`. ES modules run their imports in the order written, so
 * `import './reflect-metadata.js'` must be the first import of any module that imports @peculiar/x509.
 */

type Key = unknown;
type Target = object;

interface ReflectMetadata {
  getMetadata(key: Key, target: Target): unknown;
  getOwnMetadata(key: Key, target: Target): unknown;
  defineMetadata(key: Key, value: unknown, target: Target): void;
}

const reflect = Reflect as typeof Reflect & Partial<ReflectMetadata>;

if (typeof reflect.getMetadata !== 'function') {
  const store = new WeakMap<Target, Map<Key, unknown>>();
  const getOwn = (key: Key, target: Target): unknown => store.get(target)?.get(key);
  const shim: ReflectMetadata = {
    getOwnMetadata: getOwn,
    // Metadata is inherited along the prototype chain, as in the reflect-metadata proposal.
    getMetadata(key, target) {
      for (let t: Target | null = target; t !== null; t = Object.getPrototypeOf(t) as Target | null) {
        const own = store.get(t);
        if (own?.has(key)) return own.get(key);
      }
      return undefined;
    },
    defineMetadata(key, value, target) {
      let own = store.get(target);
      if (own === undefined) store.set(target, (own = new Map()));
      own.set(key, value);
    },
  };
  for (const [name, fn] of Object.entries(shim)) {
    Object.defineProperty(Reflect, name, { value: fn, writable: true, configurable: true });
  }
}

export {};

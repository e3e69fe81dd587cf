// cluster-key-slot ships no types: the one function Fusebox uses (Redis Cluster's CRC16 slot of a key, hash tags honoured).
declare module 'cluster-key-slot' {
  const calculateSlot: (key: string) => number;
  export default calculateSlot;
}

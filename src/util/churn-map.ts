/**
 * A Map for the long-lived registries whose entries come and go with requests (single flights,
 * waiting settlements, leases), that lets go of what a removed entry held.
 *
 * A plain long-lived `Map` with that churn holds on to finished requests: V8 rebuilds a Map's
 * hash table every few additions and links each old table to its successor (for iterators in
 * flight), and an old table keeps its entries. Once the table of the moment has reached the old
 * generation (a full collection promotes it), that dead table keeps every later table, and the
 * requests their entries reach, alive through young-generation collections, so they are promoted
 * in turn, until the next full collection starts the chain again. In the bench (c32) that
 * promoted ~8 % of all allocation, ~1 MB per scavenge, instead of ~0.5 %. Here each value sits
 * in a box that is emptied on removal, so old tables keep only keys and empty boxes.
 */
export class ChurnMap<K, V> {
  private readonly boxes = new Map<K, { value: V | undefined }>();

  get size(): number {
    return this.boxes.size;
  }

  get(key: K): V | undefined {
    return this.boxes.get(key)?.value;
  }

  set(key: K, value: V): void {
    const box = this.boxes.get(key);
    if (box) box.value = value;
    else this.boxes.set(key, { value });
  }

  delete(key: K): void {
    const box = this.boxes.get(key);
    if (!box) return;
    box.value = undefined;
    this.boxes.delete(key);
  }

  entries(): [K, V][] {
    const out: [K, V][] = [];
    for (const [k, box] of this.boxes) out.push([k, box.value as V]);
    return out;
  }

  values(): V[] {
    const out: V[] = [];
    for (const box of this.boxes.values()) out.push(box.value as V);
    return out;
  }

  clear(): void {
    for (const box of this.boxes.values()) box.value = undefined;
    this.boxes.clear();
  }
}

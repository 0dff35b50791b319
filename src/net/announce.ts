/**
 * The frame a host sends to say "this MAC is here now" after a VM moved: a RARP request broadcast
 * from the guest's MAC (what QEMU's self-announce sends), which every switch on the way learns from.
 */
export const ETH_P_RARP = 0x8035;
const ETH_P_IP = 0x0800;
const ARPHRD_ETHER = 1;
const ARPOP_RREQUEST = 3;
/** Minimum Ethernet frame without the FCS. */
export const ETH_ZLEN = 60;

/** A 60-byte RARP request "who am I" from `mac` (all IP fields zero). */
export function rarpAnnouncement(mac: Uint8Array): Uint8Array {
  const f = new Uint8Array(ETH_ZLEN);
  const v = new DataView(f.buffer);
  f.fill(0xff, 0, 6); // broadcast
  f.set(mac, 6);
  v.setUint16(12, ETH_P_RARP);
  v.setUint16(14, ARPHRD_ETHER);
  v.setUint16(16, ETH_P_IP);
  f[18] = 6; // hardware address length
  f[19] = 4; // protocol address length
  v.setUint16(20, ARPOP_RREQUEST);
  f.set(mac, 22); // sender hardware address
  f.set(mac, 32); // target hardware address
  return f;
}

// nkeys.mjs - the reference side of tests/nkey_spec.lua: what the nats.js
// nkeys package (npm "nkeys.js", the one the nats client signs with) makes
// of a key, so that tide's encoding, signing and verification are checked
// against another implementation rather than against themselves.
//
// Usage:
//   node nkeys.mjs create user|account   prints a new seed, then its public key
//   node nkeys.mjs pub SEED              the public key of SEED
//   node nkeys.mjs sign SEED MESSAGE     the signature of MESSAGE, one line in
//                                        each encoding: base64url without
//                                        padding (what nats.go sends), then
//                                        standard base64 (what nats.js sends)
//   node nkeys.mjs verify PUBKEY MESSAGE SIG_BASE64URL   prints "ok" or "bad"
//
// An error (an invalid key) prints "error: <code>" and exits 1.
import { createAccount, createUser, encode, fromPublic, fromSeed } from "nkeys.js";

const te = new TextEncoder();
const td = new TextDecoder();
const [cmd, a, b, c] = process.argv.slice(2);

try {
  if (cmd === "create") {
    const kp = a === "account" ? createAccount() : createUser();
    console.log(td.decode(kp.getSeed()));
    console.log(kp.getPublicKey());
  } else if (cmd === "pub") {
    console.log(fromSeed(te.encode(a)).getPublicKey());
  } else if (cmd === "sign") {
    const sig = fromSeed(te.encode(a)).sign(te.encode(b));
    console.log(Buffer.from(sig).toString("base64url"));
    console.log(encode(sig));
  } else if (cmd === "verify") {
    const sig = new Uint8Array(Buffer.from(c, "base64url"));
    console.log(fromPublic(a).verify(te.encode(b), sig) ? "ok" : "bad");
  } else {
    console.error("usage: node nkeys.mjs create|pub|sign|verify ...");
    process.exit(2);
  }
} catch (e) {
  console.log("error: " + (e.code || e.message));
  process.exit(1);
}

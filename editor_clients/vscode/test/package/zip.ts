// Reads a .zip (a .vsix is one) with Node's zlib: the central directory, then each entry's data. Enough for
// the archives vsce writes (stored or deflated entries, no zip64, no encryption); anything else is an error.
import { inflateRawSync } from 'node:zlib';

const END_OF_CENTRAL_DIRECTORY = 0x06054b50;
const CENTRAL_DIRECTORY_ENTRY = 0x02014b50;
const LOCAL_FILE_HEADER = 0x04034b50;

/** Entry name (e.g. "extension/out/extension.js") → its uncompressed bytes, in archive order. */
export function readZip(archive: Buffer): Map<string, Buffer> {
  let end = -1;
  for (let at = archive.length - 22; at >= Math.max(0, archive.length - 22 - 0xffff); at--) {
    if (archive.readUInt32LE(at) === END_OF_CENTRAL_DIRECTORY) {
      end = at;
      break;
    }
  }
  if (end < 0) {
    throw new Error('not a zip archive: no end-of-central-directory record');
  }
  const count = archive.readUInt16LE(end + 10);
  let at = archive.readUInt32LE(end + 16);
  const entries = new Map<string, Buffer>();
  for (let index = 0; index < count; index++) {
    if (archive.readUInt32LE(at) !== CENTRAL_DIRECTORY_ENTRY) {
      throw new Error(`bad central directory entry ${index} at ${at}`);
    }
    const flags = archive.readUInt16LE(at + 8);
    const method = archive.readUInt16LE(at + 10);
    const compressedSize = archive.readUInt32LE(at + 20);
    const size = archive.readUInt32LE(at + 24);
    const nameLength = archive.readUInt16LE(at + 28);
    const extraLength = archive.readUInt16LE(at + 30);
    const commentLength = archive.readUInt16LE(at + 32);
    const localHeader = archive.readUInt32LE(at + 42);
    const name = archive.toString('utf8', at + 46, at + 46 + nameLength);
    if (flags & 0x1) {
      throw new Error(`${name}: encrypted entries are not supported`);
    }
    if (archive.readUInt32LE(localHeader) !== LOCAL_FILE_HEADER) {
      throw new Error(`${name}: bad local file header at ${localHeader}`);
    }
    const dataStart = localHeader + 30 + archive.readUInt16LE(localHeader + 26) + archive.readUInt16LE(localHeader + 28);
    const stored = archive.subarray(dataStart, dataStart + compressedSize);
    let data: Buffer;
    if (method === 0) {
      data = Buffer.from(stored);
    } else if (method === 8) {
      data = inflateRawSync(stored);
    } else {
      throw new Error(`${name}: compression method ${method} is not supported`);
    }
    if (data.length !== size) {
      throw new Error(`${name}: ${data.length} bytes after inflating, the directory says ${size}`);
    }
    entries.set(name, data);
    at += 46 + nameLength + extraLength + commentLength;
  }
  return entries;
}

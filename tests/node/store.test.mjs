// A Node.js client of improv-store: @grpc/grpc-js with the contract loaded from
// proto/improv_store/v1/store.proto at run time by @grpc/proto-loader (no generated code).
//
//   IMPROV_STORE_ADDRESS=unix:///tmp/improv-store.sock node --test store.test.mjs
//   IMPROV_STORE_ADDRESS=127.0.0.1:50051 node --test store.test.mjs
//
// IMPROV_STORE_TEST_PREFIX (default: a fresh "node-<pid>-<time>/") prefixes every name this
// test stores, so tests/test_other_languages.py can read back what Node stored.
// IMPROV_STORE_PYTHON_OBJECT names an int32 array that the Python side stored
// first (values -3*i, shape [4, 5], order C); when unset that test is skipped.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PROTO_ROOT = path.resolve(HERE, '..', '..', 'proto');
const PROTO_FILE = 'improv_store/v1/store.proto';
const ADDRESS = process.env.IMPROV_STORE_ADDRESS;
const PREFIX = process.env.IMPROV_STORE_TEST_PREFIX || `node-${process.pid}-${Date.now()}/`;
const PYTHON_OBJECT = process.env.IMPROV_STORE_PYTHON_OBJECT || '';
const DEADLINE_MS = 10_000;

// The values tests/test_other_languages.py expects to find under PREFIX.
const F8_SHAPE = [3, 4];
const f8Value = (i) => i * 0.25 - 1;
const U2_SHAPE = [2, 3, 5];
const u2Value = (i) => (i * 4099 + 7) % 65536;
const RAW_PAYLOAD = Buffer.concat([
  Buffer.from('improv-store from node\n', 'utf8'),
  Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
]);

let client;

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function call(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline() }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

const count = (shape) => shape.reduce((a, b) => a * b, 1);

// Little-endian bytes, whatever this machine's byte order: DataView with littleEndian = true.
function float64Bytes(values) {
  const view = new DataView(new ArrayBuffer(values.length * 8));
  values.forEach((v, i) => view.setFloat64(i * 8, v, true));
  return Buffer.from(view.buffer);
}

function uint16Bytes(values) {
  const view = new DataView(new ArrayBuffer(values.length * 2));
  values.forEach((v, i) => view.setUint16(i * 2, v, true));
  return Buffer.from(view.buffer);
}

function readFloat64(buffer) {
  const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  return Array.from({ length: buffer.byteLength / 8 }, (_, i) => view.getFloat64(i * 8, true));
}

function readUint16(buffer) {
  const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  return Array.from({ length: buffer.byteLength / 2 }, (_, i) => view.getUint16(i * 2, true));
}

function readInt32(buffer) {
  const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  return Array.from({ length: buffer.byteLength / 4 }, (_, i) => view.getInt32(i * 4, true));
}

// uint64 fields arrive as decimal strings (longs: String), so compare them as strings.
const shapeStrings = (shape) => shape.map(String);

function assertMeta(meta, expected) {
  assert.equal(meta.id.length, 20, 'object IDs are 20 bytes');
  assert.equal(meta.name, expected.name);
  assert.equal(meta.size, String(expected.size));
  assert.equal(meta.encoding, expected.encoding);
  assert.ok(BigInt(meta.sequence) > 0n, `sequence ${meta.sequence} is positive`);
  if (expected.array) {
    assert.equal(meta.array.dtype, expected.array.dtype);
    assert.deepEqual(meta.array.shape, shapeStrings(expected.array.shape));
    assert.equal(meta.array.order, 'ARRAY_ORDER_C');
  }
}

before(() => {
  assert.ok(
    ADDRESS,
    'IMPROV_STORE_ADDRESS must name the store, e.g. unix:///tmp/improv-store.sock or 127.0.0.1:50051',
  );
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String,
    enums: String,
    bytes: Buffer,
    defaults: true,
    oneofs: true,
  });
  const { StoreService } = grpc.loadPackageDefinition(definition).improv_store.v1;
  client = new StoreService(ADDRESS, grpc.credentials.createInsecure());
});

after(() => client?.close());

test('Info describes the server', async () => {
  const info = await call('Info', {});
  assert.match(info.version, /^\d+\.\d+/);
  assert.ok(BigInt(info.limits.inline_limit) > 0n, 'inline_limit is positive');
  assert.ok(
    ['DURABILITY_SYNC', 'DURABILITY_ASYNC', 'DURABILITY_NONE'].includes(info.durability),
    `durability ${info.durability}`,
  );
});

test('a float64 NDARRAY round-trips by name and by ID', async () => {
  const values = Array.from({ length: count(F8_SHAPE) }, (_, i) => f8Value(i));
  const name = `${PREFIX}f8`;
  const array = { dtype: '<f8', shape: F8_SHAPE, order: 'ARRAY_ORDER_C' };
  const put = await call('Put', {
    spec: { name, encoding: 'ENCODING_NDARRAY', array, labels: { writer: 'node' } },
    data: float64Bytes(values),
  });
  const expected = { name, size: values.length * 8, encoding: 'ENCODING_NDARRAY', array };
  assertMeta(put.meta, expected);

  for (const ref of [{ name }, { id: put.meta.id }]) {
    const got = await call('Get', { ref });
    assertMeta(got.meta, expected);
    assert.deepEqual(got.meta.id, put.meta.id);
    assert.equal(got.meta.labels.writer, 'node');
    assert.equal(got.payload_omitted, false);
    assert.deepEqual(readFloat64(got.data), values);
  }
});

test('a uint16 NDARRAY built from a Uint16Array round-trips', async () => {
  const typed = Uint16Array.from({ length: count(U2_SHAPE) }, (_, i) => u2Value(i));
  const name = `${PREFIX}u2`;
  const array = { dtype: '<u2', shape: U2_SHAPE, order: 'ARRAY_ORDER_C' };
  const put = await call('Put', {
    spec: { name, encoding: 'ENCODING_NDARRAY', array },
    data: uint16Bytes(Array.from(typed)),
  });
  const expected = { name, size: typed.length * 2, encoding: 'ENCODING_NDARRAY', array };
  assertMeta(put.meta, expected);
  const got = await call('Get', { ref: { name } });
  assertMeta(got.meta, expected);
  assert.deepEqual(readUint16(got.data), Array.from(typed));
});

test('a NDARRAY whose layout does not match its size is refused', async () => {
  await assert.rejects(
    call('Put', {
      spec: {
        name: `${PREFIX}bad`,
        encoding: 'ENCODING_NDARRAY',
        array: { dtype: '<f8', shape: [3], order: 'ARRAY_ORDER_C' },
      },
      data: float64Bytes([1, 2]),
    }),
    (error) => error.code === grpc.status.INVALID_ARGUMENT,
  );
});

test('a RAW object round-trips byte for byte', async () => {
  const name = `${PREFIX}raw`;
  const put = await call('Put', {
    spec: { name, encoding: 'ENCODING_RAW' },
    data: RAW_PAYLOAD,
  });
  const expected = { name, size: RAW_PAYLOAD.length, encoding: 'ENCODING_RAW' };
  assertMeta(put.meta, expected);
  const got = await call('Get', { ref: { id: put.meta.id } });
  assertMeta(got.meta, expected);
  assert.ok(Buffer.compare(got.data, RAW_PAYLOAD) === 0, 'payload bytes differ');
});

test('a missing name is NOT_FOUND', async () => {
  await assert.rejects(
    call('Get', { ref: { name: `${PREFIX}never-stored` } }),
    (error) => error.code === grpc.status.NOT_FOUND,
  );
});

test('reads an int32 array that Python stored', { skip: !PYTHON_OBJECT }, async () => {
  const got = await call('Get', { ref: { name: PYTHON_OBJECT } });
  assert.equal(got.meta.encoding, 'ENCODING_NDARRAY');
  assert.equal(got.meta.array.dtype, '<i4');
  assert.deepEqual(got.meta.array.shape, ['4', '5']);
  assert.equal(got.meta.array.order, 'ARRAY_ORDER_C');
  assert.deepEqual(readInt32(got.data), Array.from({ length: 20 }, (_, i) => 0 - 3 * i));
});

test('Subscribe reports puts under its prefix, in order', { timeout: 30_000 }, async () => {
  const subPrefix = `${PREFIX}sub/`;
  // Follow from the next sequence number: nothing put after this point can be missed,
  // however long the server takes to register the stream.
  const info = await call('Info', {});
  const since = (BigInt(info.last_sequence) + 1n).toString();
  const stream = client.Subscribe({ prefix: subPrefix, since_sequence: since });

  const sizes = [1, 10, 100, 1000, 4096];
  const wanted = sizes.length + 1; // every put, then the delete of the first
  const events = [];
  const received = new Promise((resolve, reject) => {
    stream.on('data', (message) => {
      events.push(message.event);
      if (events.length === wanted) resolve();
    });
    stream.on('error', (error) => {
      if (events.length < wanted) reject(error);
    });
    stream.on('end', () => {
      if (events.length < wanted) reject(new Error(`stream ended after ${events.length} events`));
    });
  });

  const puts = [];
  for (const [i, size] of sizes.entries()) {
    const put = await call('Put', {
      spec: { name: `${subPrefix}${i}`, encoding: 'ENCODING_RAW' },
      data: Buffer.alloc(size, i + 1),
    });
    puts.push(put.meta);
    // An object outside the prefix, between the ones inside it, must not be reported.
    await call('Put', { spec: { name: `${PREFIX}elsewhere-${i}` }, data: Buffer.from([i]) });
  }
  const deleted = await call('Delete', { ref: { id: puts[0].id } });
  assert.equal(deleted.deleted_ids.length, 1);

  try {
    await received;
  } finally {
    stream.cancel();
  }

  const putEvents = events.slice(0, sizes.length);
  putEvents.forEach((event, i) => {
    assert.equal(event.type, 'EVENT_TYPE_PUT');
    assert.equal(event.sequence, puts[i].sequence);
    assert.equal(event.meta.sequence, puts[i].sequence);
    assert.deepEqual(event.meta.id, puts[i].id);
    assert.equal(event.meta.name, `${subPrefix}${i}`);
    assert.equal(event.meta.size, String(sizes[i]));
    assert.equal(event.meta.encoding, 'ENCODING_RAW');
  });
  const sequences = events.map((event) => BigInt(event.sequence));
  sequences.slice(1).forEach((s, i) => assert.ok(s > sequences[i], 'sequences increase'));
  // Puts outside the prefix took sequence numbers in between, but were not reported.
  assert.equal(BigInt(puts[1].sequence) - BigInt(puts[0].sequence), 2n);

  const last = events[sizes.length];
  assert.equal(last.type, 'EVENT_TYPE_DELETE');
  assert.deepEqual(last.meta.id, puts[0].id);
  assert.equal(last.meta.name, `${subPrefix}0`);
});

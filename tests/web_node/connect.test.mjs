// connect-web, the Connect client a browser dashboard uses, against improv-store's
// --web-listen. Node's fetch stands in for the browser's; the contract is loaded at
// run time from a FileDescriptorSet that tests/test_web.py writes (no generated code).
//
//   IMPROV_STORE_WEB_URL          http://127.0.0.1:PORT (the server's --web-listen)
//   IMPROV_STORE_DESCRIPTORS      path of a binary FileDescriptorSet of store.proto
//   IMPROV_STORE_TOKEN            the store's token, if it has one
//   IMPROV_STORE_TEST_PREFIX      prefix of every name this test stores (Python reads them back)
//   IMPROV_STORE_LARGE_NAME       an object larger than one message that Python stored ...
//   IMPROV_STORE_LARGE_SHA256     ... and the SHA-256 of its payload

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { createFileRegistry, fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-web';

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} must be set`);
  return value;
};

const BASE_URL = env('IMPROV_STORE_WEB_URL');
const PREFIX = env('IMPROV_STORE_TEST_PREFIX');
const TOKEN = process.env.IMPROV_STORE_TOKEN || '';
const registry = createFileRegistry(
  fromBinary(FileDescriptorSetSchema, readFileSync(env('IMPROV_STORE_DESCRIPTORS'))),
);
const StoreService = registry.getService('improv_store.v1.StoreService');
const enumValue = (enumName, valueName) =>
  registry.getEnum(`improv_store.v1.${enumName}`).values.find((v) => v.name === valueName).number;
const ENCODING_RAW = enumValue('Encoding', 'ENCODING_RAW');
const EVENT_TYPE_PUT = enumValue('EventType', 'EVENT_TYPE_PUT');

function client(useBinaryFormat, token = TOKEN) {
  const withToken = (next) => async (request) => {
    if (token) request.header.set('Authorization', `Bearer ${token}`);
    return next(request);
  };
  return createClient(
    StoreService,
    createConnectTransport({ baseUrl: BASE_URL, useBinaryFormat, interceptors: [withToken] }),
  );
}

const byName = (name) => ({ ref: { case: 'name', value: name } });
const byId = (id) => ({ ref: { case: 'id', value: id } });
const FORMATS = [
  ['JSON', false],
  ['binary', true],
];

test('Info describes the server', async () => {
  for (const [, binary] of FORMATS) {
    const info = await client(binary).info({});
    assert.ok(info.version.length > 0);
    assert.equal(typeof info.lastSequence, 'bigint');
    assert.ok(info.limits.inlineLimit > 0n);
  }
});

test('Put and Get round-trip by name and by ID, in JSON and binary', async () => {
  for (const [format, binary] of FORMATS) {
    const store = client(binary);
    const name = `${PREFIX}${format}`;
    const data = new TextEncoder().encode(`stored by connect-web in ${format}`);
    const put = await store.put({
      spec: { name, encoding: ENCODING_RAW, labels: { writer: 'connect-web' } },
      data,
    });
    assert.equal(put.meta.name, name);
    assert.equal(put.meta.size, BigInt(data.length));
    const got = await store.get({ ref: byName(name) });
    assert.deepEqual(got.data, data);
    const again = await store.get({ ref: byId(put.meta.id) });
    assert.deepEqual(again.data, data);
    assert.deepEqual(again.meta.labels, { writer: 'connect-web' });
  }
});

test('a missing name is not_found', async () => {
  for (const [, binary] of FORMATS) {
    await assert.rejects(client(binary).get({ ref: byName(`${PREFIX}missing`) }), (error) => {
      assert.ok(error instanceof ConnectError);
      assert.equal(error.code, Code.NotFound);
      return true;
    });
  }
});

test('Subscribe streams the puts under its prefix', async () => {
  const store = client(false);
  const { lastSequence } = await store.info({});
  const abort = new AbortController();
  const prefix = `${PREFIX}events/`;
  const events = store.subscribe(
    { prefix, sinceSequence: lastSequence + 1n },
    { signal: abort.signal },
  );
  const names = [0, 1, 2].map((i) => `${prefix}${i}`);
  for (const name of names) {
    await store.put({ spec: { name, encoding: ENCODING_RAW }, data: new Uint8Array([1, 2, 3]) });
  }
  const seen = [];
  try {
    for await (const response of events) {
      assert.equal(response.event.type, EVENT_TYPE_PUT);
      seen.push(response.event.meta.name);
      if (seen.length === names.length) abort.abort();
    }
  } catch (error) {
    assert.equal(ConnectError.from(error).code, Code.Canceled);
  } finally {
    abort.abort(); // whatever failed above, leave no stream open to keep node running
  }
  assert.deepEqual(seen, names);
});

test('GetStream reads an object larger than one message, in chunks', async () => {
  for (const [, binary] of FORMATS) {
    const hash = createHash('sha256');
    let parts = 0;
    let size = 0n;
    for await (const response of client(binary).getStream({
      ref: byName(env('IMPROV_STORE_LARGE_NAME')),
    })) {
      if (response.part.case === 'meta') size = response.part.value.size;
      else hash.update(response.part.value);
      parts += 1;
    }
    assert.ok(size > 0n && parts > 2, `${parts} parts`);
    assert.equal(hash.digest('hex'), env('IMPROV_STORE_LARGE_SHA256'));
  }
});

test('without the token, a store that has one says unauthenticated', { skip: !TOKEN }, async () => {
  await assert.rejects(client(false, 'not-the-token').info({}), (error) => {
    assert.equal(ConnectError.from(error).code, Code.Unauthenticated);
    return true;
  });
});

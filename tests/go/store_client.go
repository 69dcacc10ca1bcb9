// A Go client of improv-store: Debian's Go gRPC (golang-google-grpc-dev) with stubs that
// tests/go/Makefile generates from proto/ at build time (protoc-gen-go, protoc-gen-go-grpc),
// built offline in GOPATH mode, and a connection with DEFAULT settings (no receive limit
// raised): every call must fit what any gRPC client accepts out of the box.
//
//	make -C tests/go OUT=/tmp/go-client
//	IMPROV_STORE_ADDRESS=127.0.0.1:50051 /tmp/go-client/store_client
//	IMPROV_STORE_ADDRESS=unix:///tmp/improv-store.sock /tmp/go-client/store_client
//
// IMPROV_STORE_TEST_PREFIX (default "go/") prefixes every name stored, so
// tests/test_other_languages.py can read back what Go stored; IMPROV_STORE_PYTHON_OBJECT
// names an int32 array Python stored first (values -3*i, shape [4, 5], order C).
//
// Output is TAP, as the C++ client's: "ok N - name" or "not ok N - name" per test, "# "
// diagnostics, then the counts ("# tests N", "# pass N", "# fail N", "# skipped N"); exit
// status 1 when any test failed.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"sort"
	"time"

	storev1 "github.com/improv-store/improv-store/gen/go/improv_store/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

const (
	deadline            = 30 * time.Second
	mib                 = 1 << 20
	bigSize             = 20 * mib
	defaultReceiveLimit = 4 * mib // what gRPC clients accept by default
	idLength            = 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// failure ends a test: check panics with it, the runner recovers it.
type failure string

func check(condition bool, format string, args ...interface{}) {
	if !condition {
		panic(failure(fmt.Sprintf(format, args...)))
	}
}

func checkOK(err error, call string) {
	check(err == nil, "%s failed: %v", call, err)
}

func checkCode(err error, code codes.Code, call string) {
	check(status.Code(err) == code, "%s: expected %v, got %v", call, code, err)
}

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), deadline)
}

// pattern is deterministic payload bytes; tests/test_other_languages.py computes the same:
// byte i = (((i + seed) * 2654435761) mod 2^32) >> 13, low 8 bits.
func pattern(size int, seed uint32) []byte {
	data := make([]byte, size)
	for i := range data {
		x := (uint32(i) + seed) * 2654435761
		data[i] = byte(x >> 13)
	}
	return data
}

func float64LE(values []float64) []byte {
	out := make([]byte, 8*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint64(out[8*i:], math.Float64bits(v))
	}
	return out
}

func readFloat64LE(data []byte) []float64 {
	values := make([]float64, len(data)/8)
	for i := range values {
		values[i] = math.Float64frombits(binary.LittleEndian.Uint64(data[8*i:]))
	}
	return values
}

func byName(name string) *storev1.ObjectRef {
	return &storev1.ObjectRef{Ref: &storev1.ObjectRef_Name{Name: name}}
}

func byID(id []byte) *storev1.ObjectRef {
	return &storev1.ObjectRef{Ref: &storev1.ObjectRef_Id{Id: id}}
}

func rawSpec(name string) *storev1.ObjectSpec {
	return &storev1.ObjectSpec{Name: name, Encoding: storev1.Encoding_ENCODING_RAW}
}

type tester struct {
	store        storev1.StoreServiceClient
	health       healthpb.HealthClient
	prefix       string
	pythonObject string
	limits       *storev1.Limits   // from Info, by the first test
	ids          map[string][]byte // name -> ID of what the tests stored
}

func (t *tester) info() *storev1.InfoResponse {
	c, cancel := ctx()
	defer cancel()
	info, err := t.store.Info(c, &storev1.InfoRequest{})
	checkOK(err, "Info")
	return info
}

func (t *tester) put(spec *storev1.ObjectSpec, data []byte) *storev1.ObjectMeta {
	c, cancel := ctx()
	defer cancel()
	response, err := t.store.Put(c, &storev1.PutRequest{Spec: spec, Data: data})
	checkOK(err, "Put "+spec.Name)
	return response.Meta
}

func (t *tester) get(ref *storev1.ObjectRef) (*storev1.GetResponse, error) {
	c, cancel := ctx()
	defer cancel()
	return t.store.Get(c, &storev1.GetRequest{Ref: ref})
}

// putStream sends the header, then the payload in chunks of 1 MiB.
func (t *tester) putStream(spec *storev1.ObjectSpec, data []byte) *storev1.ObjectMeta {
	c, cancel := ctx()
	defer cancel()
	stream, err := t.store.PutStream(c)
	checkOK(err, "PutStream")
	header := &storev1.PutStreamHeader{Spec: spec, Size: uint64(len(data))}
	err = stream.Send(&storev1.PutStreamRequest{Part: &storev1.PutStreamRequest_Header{Header: header}})
	for offset := 0; err == nil && offset < len(data); offset += mib {
		end := offset + mib
		if end > len(data) {
			end = len(data)
		}
		err = stream.Send(&storev1.PutStreamRequest{
			Part: &storev1.PutStreamRequest_Chunk{Chunk: data[offset:end]}})
	}
	// io.EOF from Send: the server ended the call; CloseAndRecv says why.
	check(err == nil || err == io.EOF, "PutStream send: %v", err)
	response, err := stream.CloseAndRecv()
	checkOK(err, "PutStream "+spec.Name)
	return response.Meta
}

type streamed struct {
	meta   *storev1.ObjectMeta
	data   []byte
	chunks []int // the size of each chunk, in order
}

func (t *tester) getStream(request *storev1.GetStreamRequest) (streamed, error) {
	c, cancel := ctx()
	defer cancel()
	var out streamed
	stream, err := t.store.GetStream(c, request)
	if err != nil {
		return out, err
	}
	for {
		message, err := stream.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if out.meta == nil {
			check(message.GetMeta() != nil, "GetStream: the first message carries no metadata")
			out.meta = message.GetMeta()
			continue
		}
		chunk, ok := message.Part.(*storev1.GetStreamResponse_Chunk)
		check(ok, "GetStream: a later message carries no chunk")
		out.chunks = append(out.chunks, len(chunk.Chunk))
		out.data = append(out.data, chunk.Chunk...)
	}
}

func checkMeta(meta *storev1.ObjectMeta, name string, size int, encoding storev1.Encoding) {
	check(meta != nil, "%s: no metadata", name)
	check(len(meta.Id) == idLength, "%s: ID of %d bytes", name, len(meta.Id))
	check(meta.Name == name, "name %q, expected %q", meta.Name, name)
	check(meta.Size == uint64(size), "%s: size %d, expected %d", name, meta.Size, size)
	check(meta.Encoding == encoding, "%s: encoding %v", name, meta.Encoding)
	check(meta.Sequence > 0, "%s: sequence 0", name)
}

// --- the tests, in order ------------------------------------------------------------------

func (t *tester) testInfo() {
	info := t.info()
	l := info.Limits
	check(l != nil, "no limits")
	t.limits = l
	fmt.Printf("# info version=%s store_id=%s durability=%v inline_limit=%d max_response_size=%d"+
		" max_chunk_size=%d max_message_size=%d max_object_size=%d max_batch_size=%d\n",
		info.Version, info.StoreId, info.Durability, l.InlineLimit, l.MaxResponseSize,
		l.MaxChunkSize, l.MaxMessageSize, l.MaxObjectSize, l.MaxBatchSize)
	check(info.Version != "", "no version")
	check(info.Durability != storev1.Durability_DURABILITY_UNSPECIFIED, "durability unspecified")
	check(l.InlineLimit > 0, "inline_limit is 0")
	check(l.MaxResponseSize > 0, "max_response_size is 0 (not published)")
	check(l.MaxResponseSize <= defaultReceiveLimit,
		"max_response_size %d is above the default receive limit", l.MaxResponseSize)
	check(l.InlineLimit < l.MaxResponseSize,
		"inline_limit %d leaves no room for metadata below %d", l.InlineLimit, l.MaxResponseSize)
	check(l.MaxChunkSize > 0 && l.MaxChunkSize < l.MaxResponseSize, "max_chunk_size %d", l.MaxChunkSize)
	check(l.MaxObjectSize >= bigSize, "max_object_size %d", l.MaxObjectSize)
	check(l.MaxBatchSize >= 8, "max_batch_size %d", l.MaxBatchSize)
}

func (t *tester) testHealth() {
	c, cancel := ctx()
	defer cancel()
	response, err := t.health.Check(c, &healthpb.HealthCheckRequest{})
	checkOK(err, "Health/Check")
	check(response.Status == healthpb.HealthCheckResponse_SERVING, "health status %v", response.Status)
}

func (t *tester) testRaw() {
	data := []byte("improv-store from go\n")
	for i := 0; i < 256; i++ {
		data = append(data, byte(i))
	}
	data = append(data, pattern(1000, 1)...)
	name := t.prefix + "raw"
	put := t.put(rawSpec(name), data)
	checkMeta(put, name, len(data), storev1.Encoding_ENCODING_RAW)
	check(put.Crc32C == crc32.Checksum(data, castagnoli), "crc32c %d, computed %d",
		put.Crc32C, crc32.Checksum(data, castagnoli))
	t.ids[name] = put.Id
	for _, ref := range []*storev1.ObjectRef{byID(put.Id), byName(name)} {
		got, err := t.get(ref)
		checkOK(err, "Get raw")
		checkMeta(got.Meta, name, len(data), storev1.Encoding_ENCODING_RAW)
		check(bytes.Equal(got.Meta.Id, put.Id), "Get returned another object")
		check(!got.PayloadOmitted, "payload omitted")
		check(bytes.Equal(got.Data, data), "payload bytes differ")
	}
}

func (t *tester) testNdarray() {
	values := make([]float64, 2*3*4)
	for i := range values {
		values[i] = float64(i)*0.5 - 3
	}
	name := t.prefix + "f8"
	spec := &storev1.ObjectSpec{
		Name:     name,
		Encoding: storev1.Encoding_ENCODING_NDARRAY,
		Array: &storev1.ArrayLayout{
			Dtype: "<f8", Shape: []uint64{2, 3, 4}, Order: storev1.ArrayOrder_ARRAY_ORDER_C},
		Labels: map[string]string{"writer": "go"},
	}
	put := t.put(spec, float64LE(values))
	checkMeta(put, name, 8*len(values), storev1.Encoding_ENCODING_NDARRAY)
	t.ids[name] = put.Id
	for _, ref := range []*storev1.ObjectRef{byName(name), byID(put.Id)} {
		got, err := t.get(ref)
		checkOK(err, "Get f8")
		meta := got.Meta
		checkMeta(meta, name, 8*len(values), storev1.Encoding_ENCODING_NDARRAY)
		check(meta.Array.GetDtype() == "<f8", "dtype %q", meta.Array.GetDtype())
		shape := meta.Array.GetShape()
		check(len(shape) == 3 && shape[0] == 2 && shape[1] == 3 && shape[2] == 4, "shape %v", shape)
		check(meta.Array.GetOrder() == storev1.ArrayOrder_ARRAY_ORDER_C, "order is not C")
		check(meta.Labels["writer"] == "go", "labels lost: %v", meta.Labels)
		got64 := readFloat64LE(got.Data)
		check(len(got64) == len(values), "%d values", len(got64))
		for i := range values {
			check(got64[i] == values[i], "value %d: %v, expected %v", i, got64[i], values[i])
		}
	}
}

func (t *tester) testBadNdarray() {
	c, cancel := ctx()
	defer cancel()
	_, err := t.store.Put(c, &storev1.PutRequest{
		Spec: &storev1.ObjectSpec{
			Name:     t.prefix + "bad",
			Encoding: storev1.Encoding_ENCODING_NDARRAY,
			Array:    &storev1.ArrayLayout{Dtype: "<f8", Shape: []uint64{3}},
		},
		Data: float64LE([]float64{1, 2}),
	})
	checkCode(err, codes.InvalidArgument, "Put of 16 bytes as shape [3] <f8")
}

func (t *tester) testPythonObject() {
	got, err := t.get(byName(t.pythonObject))
	checkOK(err, "Get "+t.pythonObject)
	meta := got.Meta
	check(meta.Encoding == storev1.Encoding_ENCODING_NDARRAY, "not an NDARRAY")
	check(meta.Array.GetDtype() == "<i4", "dtype %q", meta.Array.GetDtype())
	shape := meta.Array.GetShape()
	check(len(shape) == 2 && shape[0] == 4 && shape[1] == 5, "shape %v", shape)
	check(meta.Array.GetOrder() == storev1.ArrayOrder_ARRAY_ORDER_C, "order is not C")
	check(len(got.Data) == 80, "%d bytes", len(got.Data))
	for i := 0; i < 20; i++ {
		v := int32(binary.LittleEndian.Uint32(got.Data[4*i:]))
		check(v == int32(-3*i), "value %d: %d", i, v)
	}
}

func (t *tester) testBigStream() {
	name := t.prefix + "big"
	data := pattern(bigSize, 7)
	spec := rawSpec(name)
	sum := crc32.Checksum(data, castagnoli)
	spec.Crc32C = &sum // the server refuses the payload if it arrives different
	put := t.putStream(spec, data)
	checkMeta(put, name, bigSize, storev1.Encoding_ENCODING_RAW)
	check(put.Crc32C == sum, "crc32c differs")
	t.ids[name] = put.Id

	got, err := t.get(byName(name)) // a Get answers with the metadata only
	checkOK(err, "Get big")
	check(got.PayloadOmitted && len(got.Data) == 0, "Get of 20 MiB did not omit the payload")
	check(got.Meta.Size == bigSize, "Get big: size")

	out, err := t.getStream(&storev1.GetStreamRequest{Ref: byID(put.Id)})
	checkOK(err, "GetStream big")
	checkMeta(out.meta, name, bigSize, storev1.Encoding_ENCODING_RAW)
	check(bytes.Equal(out.data, data), "GetStream: %d bytes, not the payload", len(out.data))
	fmt.Printf("# GetStream chunk_size 0: %d chunks of %d bytes\n", len(out.chunks), out.chunks[0])
}

func (t *tester) testChunkLimit() {
	id := t.ids[t.prefix+"big"]
	limit := t.limits.MaxChunkSize
	data := pattern(bigSize, 7)
	// The documented cap, then far above it (capped by the server), then a small size.
	for _, asked := range []uint64{limit, 64 * mib, 300001} {
		out, err := t.getStream(&storev1.GetStreamRequest{Ref: byID(id), ChunkSize: uint32(asked)})
		checkOK(err, fmt.Sprintf("GetStream with chunk_size %d", asked))
		check(bytes.Equal(out.data, data), "chunk_size %d: payload differs", asked)
		largest := 0
		for _, size := range out.chunks {
			if size > largest {
				largest = size
			}
		}
		bound := asked
		if limit < bound {
			bound = limit
		}
		check(uint64(largest) <= bound, "chunk_size %d: a chunk of %d bytes", asked, largest)
		fmt.Printf("# GetStream chunk_size %d: %d chunks, largest %d\n", asked, len(out.chunks), largest)
	}
}

func (t *tester) testRange() {
	id := t.ids[t.prefix+"big"]
	data := pattern(bigSize, 7)
	for _, r := range [][2]int{{5*mib + 3, 3*mib + 5}, {bigSize - 10, 0}, {bigSize - 10, mib}, {bigSize, 0}} {
		offset, length := r[0], r[1]
		out, err := t.getStream(&storev1.GetStreamRequest{
			Ref: byID(id), Offset: uint64(offset), Length: uint64(length)})
		checkOK(err, fmt.Sprintf("GetStream offset %d length %d", offset, length))
		check(out.meta.GetSize() == bigSize, "range: meta.size is not the object's size")
		end := len(data)
		if length > 0 && offset+length < end {
			end = offset + length
		}
		check(bytes.Equal(out.data, data[offset:end]), "offset %d length %d: %d bytes, not the range",
			offset, length, len(out.data))
	}
	_, err := t.getStream(&storev1.GetStreamRequest{Ref: byID(id), Offset: bigSize + 1})
	checkCode(err, codes.OutOfRange, "GetStream with offset beyond the payload")
}

func (t *tester) testInlineLimit() {
	limit := int(t.limits.GetInlineLimit())
	check(limit > 0, "no inline_limit from Info")
	name := t.prefix + "inline"
	data := pattern(limit, 11)
	put := t.put(rawSpec(name), data) // the largest inline Put
	checkMeta(put, name, limit, storev1.Encoding_ENCODING_RAW)
	t.ids[name] = put.Id
	// With the default 4 MiB receive limit: fails client-side (ResourceExhausted) if the
	// server sends inline_limit bytes plus metadata in a message above 4 MiB.
	got, err := t.get(byName(name))
	checkOK(err, fmt.Sprintf("Get of %d bytes (inline_limit)", limit))
	check(!got.PayloadOmitted, "payload omitted at exactly inline_limit")
	check(bytes.Equal(got.Data, data), "payload differs")

	overName := t.prefix + "over-inline"
	stored := t.putStream(rawSpec(overName), pattern(limit+1, 13))
	t.ids[overName] = stored.Id
	omitted, err := t.get(byName(overName))
	checkOK(err, "Get of inline_limit + 1 bytes")
	check(omitted.PayloadOmitted && len(omitted.Data) == 0, "a payload above inline_limit was not omitted")
	check(omitted.Meta.Size == uint64(limit+1), "size")
}

func (t *tester) testBatchGet() {
	const count = 6
	var payloads [][]byte
	request := &storev1.BatchGetRequest{}
	for i := 0; i < count; i++ {
		name := fmt.Sprintf("%sbatch/%d", t.prefix, i)
		payloads = append(payloads, pattern(mib, uint32(100+i)))
		t.ids[name] = t.put(rawSpec(name), payloads[i]).Id
		request.Refs = append(request.Refs, byName(name))
	}
	request.Refs = append(request.Refs, byName(t.prefix+"batch/missing"))
	c, cancel := ctx()
	defer cancel()
	response, err := t.store.BatchGet(c, request)
	checkOK(err, fmt.Sprintf("BatchGet of %d objects of 1 MiB", count))
	check(len(response.Results) == count+1, "%d results", len(response.Results))
	inline := 0
	for i, result := range response.Results[:count] {
		check(result.Code == 0, "result %d: code %d %s", i, result.Code, result.Message)
		check(result.Meta.GetSize() == mib, "result %d: size %d", i, result.Meta.GetSize())
		if result.PayloadOmitted { // fetched separately, as the contract says
			check(len(result.Data) == 0, "data with payload_omitted")
			out, err := t.getStream(&storev1.GetStreamRequest{Ref: byID(result.Meta.Id)})
			checkOK(err, "GetStream of an omitted payload")
			check(bytes.Equal(out.data, payloads[i]), "result %d: streamed payload differs", i)
		} else {
			check(bytes.Equal(result.Data, payloads[i]), "result %d: payload differs", i)
			inline++
		}
	}
	check(codes.Code(response.Results[count].Code) == codes.NotFound,
		"missing ref: code %d", response.Results[count].Code)
	check(inline >= 1, "no payload fitted in the response")
	check(inline < count, "6 MiB of payloads in one response")
	fmt.Printf("# BatchGet: %d of %d payloads inline\n", inline, count)
}

func (t *tester) testDelete() {
	name := t.prefix + "deleted"
	put := t.put(rawSpec(name), []byte("short-lived"))
	c, cancel := ctx()
	defer cancel()
	request := &storev1.DeleteRequest{Ref: byID(put.Id)}
	response, err := t.store.Delete(c, request)
	checkOK(err, "Delete")
	check(len(response.DeletedIds) == 1 && bytes.Equal(response.DeletedIds[0], put.Id),
		"Delete did not name the deleted object")
	for _, ref := range []*storev1.ObjectRef{byID(put.Id), byName(name)} {
		_, err := t.get(ref)
		checkCode(err, codes.NotFound, "Get after Delete")
	}
	_, err = t.store.Delete(c, request)
	checkCode(err, codes.NotFound, "second Delete")
}

func (t *tester) testSubscribe() {
	sub := t.prefix + "sub/"
	// From the next sequence number: nothing put from now on can be missed.
	info := t.info()
	since := info.LastSequence + 1
	c, cancel := ctx()
	defer cancel()
	stream, err := t.store.Subscribe(c, &storev1.SubscribeRequest{
		Prefix: sub, SinceSequence: &since, StoreId: info.StoreId})
	checkOK(err, "Subscribe")

	sizes := []int{1, 10, 100, 1000}
	var puts []*storev1.ObjectMeta
	for i, size := range sizes {
		puts = append(puts, t.put(rawSpec(fmt.Sprintf("%s%d", sub, i)), bytes.Repeat([]byte{byte('a' + i)}, size)))
		t.put(rawSpec(fmt.Sprintf("%selsewhere-%d", t.prefix, i)), []byte("x")) // outside: not reported
	}
	dc, dcancel := ctx()
	defer dcancel()
	_, err = t.store.Delete(dc, &storev1.DeleteRequest{Ref: byID(puts[0].Id)})
	checkOK(err, "Delete sub/0")

	var events []*storev1.Event
	for len(events) < len(sizes)+1 {
		message, err := stream.Recv()
		check(err == nil, "Subscribe gave %d events, then %v", len(events), err)
		events = append(events, message.Event)
	}
	cancel()
	for i := range sizes {
		event := events[i]
		check(event.Type == storev1.EventType_EVENT_TYPE_PUT, "event %d: type %v", i, event.Type)
		check(event.Sequence == puts[i].Sequence && event.Meta.GetSequence() == puts[i].Sequence,
			"event %d: sequence %d, put had %d", i, event.Sequence, puts[i].Sequence)
		check(bytes.Equal(event.Meta.GetId(), puts[i].Id), "event %d: another object", i)
		checkMeta(event.Meta, fmt.Sprintf("%s%d", sub, i), sizes[i], storev1.Encoding_ENCODING_RAW)
	}
	last := events[len(sizes)]
	check(last.Type == storev1.EventType_EVENT_TYPE_DELETE, "last event: type %v", last.Type)
	check(bytes.Equal(last.Meta.GetId(), puts[0].Id), "the DELETE event names another object")
	check(last.Sequence > events[len(sizes)-1].Sequence, "sequences do not increase")
}

// run runs one test, turning a failed check (or any panic) into its message.
func run(test func()) (message string) {
	defer func() {
		if r := recover(); r != nil {
			message = fmt.Sprint(r)
		}
	}()
	test()
	return ""
}

func main() {
	address := os.Getenv("IMPROV_STORE_ADDRESS")
	if address == "" {
		fmt.Fprintln(os.Stderr, "IMPROV_STORE_ADDRESS must name the store, e.g. 127.0.0.1:50051")
		os.Exit(2)
	}
	prefix := os.Getenv("IMPROV_STORE_TEST_PREFIX")
	if prefix == "" {
		prefix = "go/"
	}
	// Default dial options: nothing raises the 4 MiB receive limit.
	conn, err := grpc.Dial(address, grpc.WithInsecure())
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(2)
	}
	defer conn.Close()
	t := &tester{
		store:        storev1.NewStoreServiceClient(conn),
		health:       healthpb.NewHealthClient(conn),
		prefix:       prefix,
		pythonObject: os.Getenv("IMPROV_STORE_PYTHON_OBJECT"),
		limits:       &storev1.Limits{},
		ids:          map[string][]byte{},
	}
	tests := []struct {
		name string
		run  func()
	}{
		{"Info describes the server and its limits", t.testInfo},
		{"the health service answers SERVING", t.testHealth},
		{"a RAW object round-trips by ID and by name", t.testRaw},
		{"a float64 NDARRAY round-trips by name and by ID", t.testNdarray},
		{"a NDARRAY whose layout does not match its size is INVALID_ARGUMENT", t.testBadNdarray},
		{"reads an int32 array that Python stored", t.testPythonObject},
		{"a 20 MiB object goes through PutStream and GetStream", t.testBigStream},
		{"GetStream chunks stay within max_chunk_size", t.testChunkLimit},
		{"GetStream reads a range by offset and length", t.testRange},
		{"a Get of exactly inline_limit bytes fits the default receive limit", t.testInlineLimit},
		{"a BatchGet of 1 MiB objects fits the default receive limit", t.testBatchGet},
		{"Delete, then Get is NOT_FOUND", t.testDelete},
		{"Subscribe reports its own puts and deletes, in order", t.testSubscribe},
	}
	fmt.Println("TAP version 13")
	passed, failed, skipped := 0, 0, 0
	for i, test := range tests {
		number := i + 1
		if test.name == "reads an int32 array that Python stored" && t.pythonObject == "" {
			fmt.Printf("ok %d - %s # SKIP IMPROV_STORE_PYTHON_OBJECT unset\n", number, test.name)
			skipped++
			continue
		}
		if message := run(test.run); message != "" {
			fmt.Printf("not ok %d - %s\n# %s\n", number, test.name, message)
			failed++
		} else {
			fmt.Printf("ok %d - %s\n", number, test.name)
			passed++
		}
	}
	fmt.Printf("1..%d\n# tests %d\n# pass %d\n# fail %d\n# skipped %d\n",
		len(tests), len(tests), passed, failed, skipped)
	names := make([]string, 0, len(t.ids))
	for name := range t.ids {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Printf("# stored %s %s\n", name, hex.EncodeToString(t.ids[name]))
	}
	if failed > 0 {
		os.Exit(1)
	}
}

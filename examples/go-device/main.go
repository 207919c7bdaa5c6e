// Command go-device is an iotstream device in Go: it streams column batches on Ingest/Stream, keeps every
// batch until its Ack, resends the unacked in order with the same seq after a reconnect, and applies the
// configuration the server pushes down the same stream (then reports the version applied).
//
//	./generate.sh && go run . -target 127.0.0.1:50051 -device pump-7 -readings 1000
//
// It prints one JSON line at the end: readings acked and rejected, reconnects, the configuration applied.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "iotstream.example/go-device/ingestpb"
)

const maxInflight = 16 // batches sent ahead of their acks

// columns lays readings out as one ReadingBatch: times relative to the first, metric names as a dictionary.
func columns(device string, seq uint64, times []int64, metrics []string, values []float64) *pb.ReadingBatch {
	b := &pb.ReadingBatch{DeviceId: device, Seq: seq, BaseTimeMs: times[0]}
	index := map[string]uint32{}
	for i, m := range metrics {
		k, ok := index[m]
		if !ok {
			k = uint32(len(b.MetricNames))
			index[m] = k
			b.MetricNames = append(b.MetricNames, m)
		}
		b.TimeOffsetMs = append(b.TimeOffsetMs, times[i]-times[0])
		b.MetricIndex = append(b.MetricIndex, k)
		b.Values = append(b.Values, values[i])
	}
	return b
}

// retryDelay is how long to wait before reconnecting: what the server asked for (grpc-retry-pushback-ms),
// else full jitter over an exponential backoff capped at max.
func retryDelay(pushback string, failures int, base, max time.Duration, rnd func() float64) time.Duration {
	if ms, err := strconv.Atoi(pushback); err == nil && ms >= 0 {
		return time.Duration(ms) * time.Millisecond
	}
	ceiling := base << min(failures, 20)
	if ceiling > max || ceiling <= 0 {
		ceiling = max
	}
	return time.Duration(rnd() * float64(ceiling))
}

type device struct {
	id       string
	client   pb.IngestClient
	token    string
	unacked  []*pb.ReadingBatch // sealed and not acked yet, in seq order
	applied  *pb.DeviceConfig   // the configuration applied (nil: none)
	acked    int
	rejected int
}

// session runs one stream until every batch is acked (and, with waitConfig, a configuration applied).
// It returns the error that ended the stream otherwise, with the pushback the server asked for.
func (d *device) session(ctx context.Context, waitConfig bool) (pushback string, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if d.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+d.token)
	}
	stream, err := d.client.Stream(ctx)
	if err != nil {
		return "", err
	}
	out := make(chan *pb.ReadingBatch, 2*maxInflight)
	window := make(chan struct{}, maxInflight)
	var mu sync.Mutex
	var inflight []uint64 // seqs written, in order (0: a control batch)

	send := func(msg *pb.ReadingBatch) {
		select {
		case out <- msg:
		case <-ctx.Done():
		}
	}
	go func() { // the only writer of the stream
		for {
			select {
			case msg, ok := <-out:
				if !ok {
					stream.CloseSend()
					return
				}
				mu.Lock()
				inflight = append(inflight, msg.Seq)
				mu.Unlock()
				if stream.Send(msg) != nil {
					return // Recv reports why
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	report := func() { // seq 0, no readings: says which configuration is applied
		var v uint64
		if d.applied != nil {
			v = d.applied.Version
		}
		send(&pb.ReadingBatch{DeviceId: d.id, ConfigApplied: v})
	}
	report()
	pending := append([]*pb.ReadingBatch(nil), d.unacked...)
	go func() { // resend the unacked first, in order, the same bytes under the same seq
		for _, b := range pending {
			select {
			case window <- struct{}{}:
			case <-ctx.Done():
				return
			}
			send(b)
		}
	}()

	closed := false
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return "", nil
		}
		if err != nil {
			if v := stream.Trailer().Get("grpc-retry-pushback-ms"); len(v) > 0 {
				return v[0], err
			}
			return "", err
		}
		switch kind := resp.Kind.(type) {
		case *pb.StreamResponse_Config:
			if d.applied == nil || kind.Config.Version > d.applied.Version {
				log.Printf("configuration %d: sample every %d ms, metrics %v, settings %v", kind.Config.Version,
					kind.Config.SampleIntervalMs, kind.Config.Metrics, kind.Config.Settings)
				d.applied = kind.Config
			}
			if !closed {
				report()
			}
		case *pb.StreamResponse_Ack:
			mu.Lock()
			seq := inflight[0]
			inflight = inflight[1:]
			mu.Unlock()
			if kind.Ack.Seq != seq {
				return "", fmt.Errorf("ack for seq %d while %d was due", kind.Ack.Seq, seq)
			}
			if seq != 0 {
				d.unacked = d.unacked[1:]
				d.acked += int(kind.Ack.Accepted)
				d.rejected += len(kind.Ack.Rejected)
				<-window
			}
		}
		if !closed && len(d.unacked) == 0 && (!waitConfig || d.applied != nil) {
			closed = true
			close(out) // half-close; the server ends the call once the last ack is out
		}
	}
}

func main() {
	target := flag.String("target", "127.0.0.1:50051", "ingest server host:port")
	id := flag.String("device", "go-device", "device id")
	token := flag.String("token", os.Getenv("IOTSTREAM_TOKEN"), "device token (default $IOTSTREAM_TOKEN)")
	n := flag.Int("readings", 1000, "readings to send")
	size := flag.Int("batch", 100, "readings per batch")
	waitConfig := flag.Bool("wait-config", false, "stay connected until a configuration has been applied")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long")
	flag.Parse()

	conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		// NATs forget idle flows after 30-60 s: ping every 30 s, give up on a silent peer after 10 s.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second,
			PermitWithoutStream: true}))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	d := &device{id: *id, client: pb.NewIngestClient(conn), token: *token}

	now := time.Now().UnixMilli()
	seq := uint64(time.Now().UnixMicro()) // only grows, across restarts too
	for start := 0; start < *n; start += *size {
		end := min(start+*size, *n)
		var times []int64
		var metrics []string
		var values []float64
		for i := start; i < end; i++ {
			times = append(times, now-int64(10*(*n-i)))
			metrics = append(metrics, "temp")
			values = append(values, float64(i))
		}
		seq++
		d.unacked = append(d.unacked, columns(*id, seq, times, metrics, values))
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	reconnects := 0
	for failures := 0; ; {
		before := d.acked
		pushback, err := d.session(ctx, *waitConfig)
		if err == nil {
			break
		}
		if code := status.Code(err); code == codes.PermissionDenied || code == codes.InvalidArgument || ctx.Err() != nil {
			log.Fatalf("stream refused: %v", err)
		}
		if d.acked > before {
			failures = 0
		}
		delay := retryDelay(pushback, failures, 200*time.Millisecond, 10*time.Second, rand.Float64)
		failures++
		reconnects++
		log.Printf("stream ended (%v); reconnecting in %v", err, delay)
		time.Sleep(delay)
	}
	summary := map[string]any{"acked": d.acked, "rejected": d.rejected, "reconnects": reconnects}
	if d.applied != nil {
		summary["config_version"] = d.applied.Version
		summary["settings"] = d.applied.Settings
	}
	json.NewEncoder(os.Stdout).Encode(summary)
}

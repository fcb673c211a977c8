package queue

import (
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/nats-io/nats.go"
)

// HeaderEncoding names how a main-stream message's data is encoded. Without
// it the data is the event's JSON exactly as the webhook (or the Events API)
// delivered it.
const HeaderEncoding = "Dsyncd-Encoding"

// Encodings of event data in the main stream (Options.Encoding).
const (
	// EncodingJSON stores each event as received, with no HeaderEncoding.
	EncodingJSON = "json"
	// EncodingS2 stores each event S2-compressed (block format), with
	// HeaderEncoding "s2". An event that would not shrink is stored as JSON.
	EncodingS2 = "s2"
)

// ErrUndecodable is wrapped by Data's errors: the message's data cannot be
// decoded (an unknown encoding, or corrupt compressed bytes). Retrying cannot
// help; park the message.
var ErrUndecodable = errors.New("queue: undecodable message data")

// maxDecodedLen bounds the length compressed data may claim, so that a
// corrupt or hostile message cannot make Data allocate without limit. It is
// far above any event dsyncd accepts (webhook.max_body_bytes, NATS's
// max_payload).
const maxDecodedLen = 64 << 20

// Data returns a main-stream message's event JSON, decoding data according
// to encoding, the message's HeaderEncoding ("" without one: data is
// returned as it is). Errors wrap ErrUndecodable.
func Data(encoding string, data []byte) ([]byte, error) {
	switch enc := encoding; enc {
	case "", EncodingJSON:
		return data, nil
	case EncodingS2:
		n, err := s2.DecodedLen(data)
		if err != nil {
			return nil, fmt.Errorf("%w: s2: %v", ErrUndecodable, err)
		}
		if n > maxDecodedLen {
			return nil, fmt.Errorf("%w: s2: claims %d bytes decoded, more than %d", ErrUndecodable, n, maxDecodedLen)
		}
		out, err := s2.Decode(nil, data)
		if err != nil {
			return nil, fmt.Errorf("%w: s2: %v", ErrUndecodable, err)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("%w: unknown %s %q", ErrUndecodable, HeaderEncoding, enc)
	}
}

// dataOf is Data of a message with headers h.
func dataOf(h nats.Header, data []byte) ([]byte, error) {
	return Data(h.Get(HeaderEncoding), data)
}

// encodeBufs recycles Publish's compression buffers: the connection copies
// a message before Publish returns.
var encodeBufs = sync.Pool{New: func() any { return new([]byte) }}

// encoded is data as Publish stores it under encoding: the bytes, the value
// of HeaderEncoding ("" for none), and the pooled buffer holding them (nil
// for none), to give back to encodeBufs once the bytes are sent.
func encoded(encoding string, data []byte) (out []byte, header string, buf *[]byte) {
	if encoding != EncodingS2 || len(data) == 0 {
		return data, "", nil
	}
	buf = encodeBufs.Get().(*[]byte)
	*buf = s2.Encode((*buf)[:0], data)
	if len(*buf) >= len(data) {
		encodeBufs.Put(buf)
		return data, "", nil
	}
	return *buf, EncodingS2, buf
}

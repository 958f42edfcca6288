package storeutil

import (
	"encoding/json"
	"testing"

	"github.com/steadfast-go/steadfast/eventsource"
)

func FuzzAppendMetadataJSON(f *testing.F) {
	f.Add("correlation-id", "0192f8a4", "k\n\"\\", "\x00\u2028<>&é🙂")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		md := eventsource.Metadata{k1: v1, k2: v2}
		for k, v := range md {
			if eventsource.ValidateAppend([]eventsource.StreamAppend{{StreamID: "s", Events: []eventsource.EventData{
				{Type: "t", SchemaVersion: 1, Metadata: eventsource.Metadata{k: v}}}}}) != nil {
				return
			}
		}
		got := AppendMetadataJSON(nil, md)
		var back eventsource.Metadata
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%q is not JSON: %v", got, err)
		}
		if len(back) != len(md) {
			t.Fatalf("%q decodes to %v, want %v", got, back, md)
		}
		for k, v := range md {
			if back[k] != v {
				t.Fatalf("%q decodes to %v, want %v", got, back, md)
			}
		}
	})
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// post places o through the HTTP API.
func post(ctx context.Context, base string, o Order) error {
	b, _ := json.Marshal(o)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/orders", bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("orderflow: POST /orders: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// final reports whether an order's status can change no more.
func final(status string) bool {
	return status == "shipped" || strings.HasPrefix(status, "cancelled")
}

// waitFinal polls GET /orders/{id} until the order reached a final status.
func waitFinal(ctx context.Context, base, id string, sys *System) (View, error) {
	var last View
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/orders/"+id, nil)
		if err != nil {
			return last, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			if resp.StatusCode == http.StatusOK {
				_ = json.NewDecoder(resp.Body).Decode(&last)
			}
			resp.Body.Close()
			if final(last.Status) {
				return last, nil
			}
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("orderflow: order %s not finished (last view %+v): %w", id, last, ctx.Err())
		case err := <-sys.Err():
			return last, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// rootSpan finds the HTTP server span that placed order id.
func rootSpan(spans *Spans, id string) (sdktrace.ReadOnlySpan, bool) {
	return spans.Find("POST /orders", func(s sdktrace.ReadOnlySpan) bool {
		for _, a := range s.Attributes() {
			if a.Key == attribute.Key("order.id") && a.Value.AsString() == id {
				return true
			}
		}
		return false
	})
}

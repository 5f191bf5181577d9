package webhooks

import (
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

// TestDecideSchedule walks one delivery through failures: each retry is
// due after its step of the schedule, counted from the failed attempt; the
// failure after the last retry drops it; a success at any point clears
// the webhook's failing time.
func TestDecideSchedule(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h := &store.Webhook{}
	d := &store.Delivery{}
	now := t0
	fail := outcome{result: resultHTTPError, status: 500, err: "the receiver answered 500"}
	for i, pause := range Schedule {
		op, drop := decide(h, d, fail, now)
		if op != store.DeliveryRetry || drop || !d.NextAt.Equal(now.Add(pause)) || d.Attempts != i+1 {
			t.Fatalf("failure %d: op %v drop %t next %v attempts %d; want retry in %v", i+1, op, drop, d.NextAt.Sub(now), d.Attempts, pause)
		}
		if !h.FailingSince.Equal(t0) || h.LastDelivery.StatusCode != 500 {
			t.Errorf("failure %d: failing since %v, last %+v", i+1, h.FailingSince, h.LastDelivery)
		}
		now = d.NextAt
	}
	if op, drop := decide(h, d, fail, now); op != store.DeliveryDone || !drop {
		t.Errorf("failure after the last retry: op %v drop %t; want dropped", op, drop)
	}
	if total := now.Sub(t0); total < 27*time.Hour || total > 28*time.Hour {
		t.Errorf("the schedule spans %v; Standard Webhooks' spans about 27.6 h", total)
	}
	if op, drop := decide(h, &store.Delivery{}, outcome{result: resultSuccess, status: 200}, now); op != store.DeliveryDone || drop || h.FailingSince != nil {
		t.Errorf("success: op %v drop %t failing since %v", op, drop, h.FailingSince)
	}
}

func TestDecideDisables(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h := &store.Webhook{}
	if op, _ := decide(h, &store.Delivery{}, outcome{result: resultGone, status: 410}, t0); op != store.DeliveryDisable || h.DisabledReason != disabledGone || !h.DisabledAt.Equal(t0) {
		t.Errorf("410: op %v, %+v", op, h)
	}
	since := t0.Add(-FailingLimit)
	h = &store.Webhook{FailingSince: &since}
	if op, _ := decide(h, &store.Delivery{}, outcome{result: resultTimeout}, t0.Add(-time.Second)); op != store.DeliveryRetry || h.DisabledAt != nil {
		t.Errorf("a failure just under 5 days: op %v, disabled %v", op, h.DisabledAt)
	}
	if op, _ := decide(h, &store.Delivery{}, outcome{result: resultTimeout}, t0); op != store.DeliveryDisable || h.DisabledReason != disabledFailing {
		t.Errorf("a failure at 5 days: op %v, reason %q", op, h.DisabledReason)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		v    string
		want time.Duration
	}{
		{"", 0},
		{"120", 2 * time.Minute},
		{"-5", 0},
		{"99999999999999", maxRetryAfter},
		{now.Add(time.Hour).Format("Mon, 02 Jan 2006 15:04:05 GMT"), time.Hour},
		{now.Add(-time.Hour).Format("Mon, 02 Jan 2006 15:04:05 GMT"), 0},
		{"tomorrow", 0},
	} {
		if got := retryAfter(tt.v, now); got != tt.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tt.v, got, tt.want)
		}
	}
}

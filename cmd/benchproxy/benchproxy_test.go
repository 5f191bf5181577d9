package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseWrkOutput(t *testing.T) {
	s, err := parseWrkOutput("Running 10s test\nBENCHJSON {\"duration_us\":10000000,\"requests\":5,\"bytes\":10,\"connect\":0,\"read\":1,\"write\":0,\"status\":2,\"timeout\":0,\"p50_us\":100,\"p90_us\":200,\"p99_us\":300,\"max_us\":400,\"mean_us\":120.5}\n")
	if err != nil {
		t.Fatal(err)
	}
	if s.Requests != 5 || s.P99US != 300 || s.errors() != 3 {
		t.Errorf("got %+v", s)
	}
	if _, err := parseWrkOutput("no summary"); err == nil {
		t.Error("no summary parsed")
	}
}

func TestBodies(t *testing.T) {
	body := postJSON(1024)
	if len(body) != 1024 || !json.Valid(body) {
		t.Errorf("postJSON(1024): %d bytes, valid JSON %v", len(body), json.Valid(body))
	}
	if n := len(staticJS(60 << 10)); n != 60<<10 {
		t.Errorf("staticJS: %d bytes", n)
	}
	script := wrkScript("POST", "/i/v0/e/", string(body))
	for _, want := range []string{`wrk.method = "POST"`, "wrk.lookup(\"127.0.0.1\"", "[==[" + string(body) + "]==]", "BENCHJSON"} {
		if !strings.Contains(script, want) {
			t.Errorf("wrk script lacks %q", want)
		}
	}
}

func TestSpreadAndRatio(t *testing.T) {
	s, _ := spreadOf([]float64{3, 1, 2})
	if s != (spread{1, 2, 3}) {
		t.Errorf("spread = %+v", s)
	}
	results := []result{
		{Repeat: 1, Peer: "a", Test: testPost, PerSec: 10}, {Repeat: 1, Peer: "b", Test: testPost, PerSec: 20},
		{Repeat: 2, Peer: "a", Test: testPost, PerSec: 30}, {Repeat: 2, Peer: "b", Test: testPost, PerSec: 30},
		{Repeat: 3, Peer: "a", Test: testPost, PerSec: 20}, {Repeat: 3, Peer: "b", Test: testPost, PerSec: 40},
	}
	r := ratioOf(results, "a", "b", mPostRPS)
	if !r.ok || r.ofMedians != 20.0/30 || r.paired.min != 0.5 || r.paired.max != 1 {
		t.Errorf("ratio = %+v", r)
	}
	if num(1234567) != "1,234,567" || num(5.5) != "5.50" {
		t.Errorf("num: %s %s", num(1234567), num(5.5))
	}
}

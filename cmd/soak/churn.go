package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
)

const (
	// validWait bounds create → valid for one record. Against Pebble on
	// loopback it takes seconds; minutes mean the lifecycle is stuck.
	validWait = 3 * time.Minute
	// goneWait bounds DELETE → record gone (deleting → certificate dropped).
	goneWait = time.Minute
	// pollEvery is how often a record's status is read while waiting.
	pollEvery = 200 * time.Millisecond
)

// churn runs the create → valid → traffic → delete loops.
type churn struct {
	cfg       config
	api       *apiClient
	dns       *dnstest.Server
	targets   *targets
	traffic   *trafficStats
	fresh     *http.Client // no keep-alive: each provoked request makes a new handshake
	httpsPort int
	fails     *failures
	end       time.Time
	log       io.Writer

	seq atomic.Int64
	mu  sync.Mutex
	st  churnStats
}

// churnStats is what the churn did, for the report.
type churnStats struct {
	created, valid, served, deleted int
	requests                        int64           // sent to churned domains while they were served
	toValid, toGone                 []time.Duration // create → valid; DELETE → gone
	paths                           map[string]int  // status sequences seen on the way to valid
}

func (c *churn) stats() churnStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

func (c *churn) note(f func(*churnStats)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st.paths == nil {
		c.st.paths = map[string]int{}
	}
	f(&c.st)
}

// worker runs cycles until the run's end. A cycle under way at the end
// finishes (its record is deleted), without traffic if it went valid late.
func (c *churn) worker(ctx context.Context) {
	for ctx.Err() == nil && time.Now().Before(c.end) {
		c.cycle(ctx)
	}
}

func (c *churn) cycle(ctx context.Context) {
	domain := fmt.Sprintf("c%d.soak.example.com", c.seq.Add(1))
	created := time.Now()
	rec, err := c.api.create(ctx, domain)
	if err != nil {
		c.fails.add("api", "create failed", err.Error())
		sleepCtx(ctx, time.Second) // do not spin on a broken API
		return
	}
	c.note(func(s *churnStats) { s.created++ })
	// The customer adds the CNAME; the operator's wildcard resolves the
	// target to this machine.
	c.dns.SetA(rec.TargetCNAME, "127.0.0.1")
	c.dns.SetCNAME(domain, rec.TargetCNAME)
	defer func() {
		c.dns.Remove(domain)
		c.dns.Remove(rec.TargetCNAME)
	}()

	var path []string
	if err := c.api.waitValid(ctx, rec.ID, &path, validWait); err != nil {
		c.fails.add("lifecycle", "record did not become valid", domain+": "+err.Error())
		c.delete(ctx, rec, false)
		return
	}
	toValid := time.Since(created)
	c.note(func(s *churnStats) {
		s.valid++
		s.toValid = append(s.toValid, toValid)
		s.paths[strings.Join(path, " → ")]++
	})

	if now := time.Now(); now.Before(c.end) {
		tg := c.targets.add(domain)
		sleepCtx(ctx, min(c.cfg.LiveFor, c.end.Sub(now)))
		c.targets.remove(tg)
		c.note(func(s *churnStats) {
			s.served++
			s.requests += tg.requests.Load()
		})
	}
	c.delete(ctx, rec, true)
}

// delete deletes rec, waits until it is gone, and then, for a record that
// was served, sends the provoked requests to its domain.
func (c *churn) delete(ctx context.Context, rec record, provoke bool) {
	t := time.Now()
	if err := c.api.delete(ctx, rec.ID); err != nil {
		c.fails.add("api", "delete failed", err.Error())
		return
	}
	if err := c.api.waitGone(ctx, rec.ID, goneWait); err != nil {
		c.fails.add("lifecycle", "deleted record not gone", rec.Domain+": "+err.Error())
		return
	}
	toGone := time.Since(t)
	c.note(func(s *churnStats) {
		s.deleted++
		s.toGone = append(s.toGone, toGone)
	})
	if !provoke {
		return
	}
	// The record is gone, so the edge must refuse the handshake: it serves
	// TLS only for domains whose certificate is held and that are not
	// deleting.
	url := fmt.Sprintf("https://%s:%d/i/v0/e/", rec.Domain, c.httpsPort)
	for range c.cfg.Provoked {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := c.fresh.Do(req)
		switch {
		case err == nil:
			resp.Body.Close()
			c.traffic.provoked(time.Now(), false, "a deleted domain still completed a TLS handshake",
				fmt.Sprintf("%s answered %s after its record was gone", rec.Domain, resp.Status))
		case classify(err) == "TLS handshake refused":
			c.traffic.provoked(time.Now(), true, "", "")
		default:
			c.traffic.provoked(time.Now(), false, "request to a deleted domain failed otherwise than by a refused handshake: "+classify(err), err.Error())
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// apiClient calls the management API with the bootstrap key.
type apiClient struct {
	base, key string
	http      *http.Client
}

type record struct {
	ID          string  `json:"id"`
	Domain      string  `json:"domain"`
	TargetCNAME string  `json:"target_cname"`
	Status      string  `json:"status"`
	Message     *string `json:"message"`
}

func (a *apiClient) do(ctx context.Context, method, path, body string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, a.base+"/api/organizations/@current/proxy_records/"+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.http.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s /%s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, fmt.Errorf("%s /%s: reading answer: %w", method, path, err)
	}
	return resp.StatusCode, data, nil
}

func (a *apiClient) create(ctx context.Context, domain string) (record, error) {
	var rec record
	code, data, err := a.do(ctx, http.MethodPost, "", fmt.Sprintf(`{"domain":%q}`, domain))
	if err != nil {
		return rec, err
	}
	if code != http.StatusCreated {
		return rec, fmt.Errorf("POST %s: status %d, want 201: %s", domain, code, data)
	}
	return rec, json.Unmarshal(data, &rec)
}

// get reads a record; found is false on 404.
func (a *apiClient) get(ctx context.Context, id string) (rec record, found bool, err error) {
	code, data, err := a.do(ctx, http.MethodGet, id+"/", "")
	switch {
	case err != nil:
		return rec, false, err
	case code == http.StatusNotFound:
		return rec, false, nil
	case code != http.StatusOK:
		return rec, false, fmt.Errorf("GET %s: status %d: %s", id, code, data)
	}
	return rec, true, json.Unmarshal(data, &rec)
}

func (a *apiClient) delete(ctx context.Context, id string) error {
	code, data, err := a.do(ctx, http.MethodDelete, id+"/", "")
	if err != nil {
		return err
	}
	if code != http.StatusNoContent {
		return fmt.Errorf("DELETE %s: status %d, want 204: %s", id, code, data)
	}
	return nil
}

// waitValid polls the record until it is valid, appending each new status
// seen to *path (path may be nil). A status that needs a retry, or limit
// passing, is an error.
func (a *apiClient) waitValid(ctx context.Context, id string, path *[]string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	last := ""
	for {
		rec, found, err := a.get(ctx, id)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("record %s vanished", id)
		}
		if rec.Status != last && path != nil {
			*path = append(*path, rec.Status)
		}
		last = rec.Status
		switch rec.Status {
		case "valid":
			return nil
		case "erroring", "timed_out", "warning", "deleting":
			msg := ""
			if rec.Message != nil {
				msg = ": " + *rec.Message
			}
			return fmt.Errorf("status %s%s", rec.Status, msg)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still %s after %v", rec.Status, limit)
		}
		sleepCtx(ctx, pollEvery)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// waitGone polls the record until the API answers 404 for it.
func (a *apiClient) waitGone(ctx context.Context, id string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		rec, found, err := a.get(ctx, id)
		if err != nil {
			return err
		}
		if !found {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still %s %v after DELETE", rec.Status, limit)
		}
		sleepCtx(ctx, pollEvery)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

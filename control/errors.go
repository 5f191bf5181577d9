package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"syscall"

	"github.com/edgeproxy/edgeproxy/store"
)

// apiError is an error as the client sees it (a status and a body of
// type, code, detail and attr) together with the cause that only the log
// sees.
type apiError struct {
	Status int     `json:"-"`
	Type   string  `json:"type"`
	Code   string  `json:"code"`
	Detail string  `json:"detail"`
	Attr   *string `json:"attr"`
	// cause is logged, never sent.
	cause error
	// retryAfter, when set, is sent as the Retry-After header (seconds).
	retryAfter int
}

func (e *apiError) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("%d %s: %s: %v", e.Status, e.Code, e.Detail, e.cause)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Detail)
}

func attr(name string) *string { return &name }

var (
	errNotAuthenticated = &apiError{Status: http.StatusUnauthorized, Type: "authentication_error", Code: "not_authenticated",
		Detail: "Authentication credentials were not provided."}
	errOrgNotFound = &apiError{Status: http.StatusNotFound, Type: "invalid_request", Code: "not_found",
		Detail: "Organization not found."}
	errNotFound = &apiError{Status: http.StatusNotFound, Type: "invalid_request", Code: "not_found",
		Detail: "Not found."}
	errLevelTooLow = &apiError{Status: http.StatusForbidden, Type: "authentication_error", Code: "permission_denied",
		Detail: "Your organization access level is insufficient."}
	errTooLarge = &apiError{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request", Code: "request_too_large",
		Detail: fmt.Sprintf("Request body exceeds the limit of %d bytes (1 MiB).", maxAPIBody)}
	errDomainTaken = &apiError{Status: http.StatusBadRequest, Type: "validation_error", Code: "unique",
		Detail: "A proxy record with this domain already exists.", Attr: attr("domain")}
)

// keyInvalid is the answer to a key that is unknown or revoked; where names
// the place the key was found.
func keyInvalid(where string) *apiError {
	return &apiError{Status: http.StatusUnauthorized, Type: "authentication_error", Code: "authentication_failed",
		Detail: fmt.Sprintf("Personal API key found in request %s is invalid.", where)}
}

func scopeMissing(scope string) *apiError {
	return &apiError{Status: http.StatusForbidden, Type: "authentication_error", Code: "permission_denied",
		Detail: fmt.Sprintf("API key missing required scope '%s'", scope)}
}

func orgNotInKey(orgID string) *apiError {
	return &apiError{Status: http.StatusForbidden, Type: "authentication_error", Code: "permission_denied",
		Detail: fmt.Sprintf("API key does not have access to the requested organization: ID %s.", orgID)}
}

func methodNotAllowed(method string) *apiError {
	return &apiError{Status: http.StatusMethodNotAllowed, Type: "invalid_request", Code: "method_not_allowed",
		Detail: fmt.Sprintf("Method %q not allowed.", method)}
}

func parseError(detail string) *apiError {
	return &apiError{Status: http.StatusBadRequest, Type: "invalid_request", Code: "parse_error", Detail: detail}
}

func limitReached(max int) *apiError {
	return &apiError{Status: http.StatusBadRequest, Type: "validation_error", Code: "max_proxy_records",
		Detail: fmt.Sprintf("Maximum of %d proxy records per organization.", max)}
}

func invalidState(status string) *apiError {
	return &apiError{Status: http.StatusBadRequest, Type: "validation_error", Code: "invalid_state",
		Detail: fmt.Sprintf("Cannot retry proxy in %s state.", status)}
}

// internalError hides cause from the client; the log gets it. A write the
// disk refused, or one the cluster store could not be reached for, is no
// fault of the server's code and passes once the disk or the cluster is
// back, so it is the 503 of storageUnavailable instead.
func internalError(cause error) *apiError {
	if errors.Is(cause, store.ErrUnwritable) || errors.Is(cause, store.ErrUnavailable) {
		return storageUnavailable(cause)
	}
	return &apiError{Status: http.StatusInternalServerError, Type: "server_error", Code: "error",
		Detail: "A server error occurred.", cause: cause}
}

// storageRetryAfter is the Retry-After of a refused write, in seconds: the
// time an operator or a cleanup job plausibly needs to make room, and long
// enough that retrying clients do not add load meanwhile.
const storageRetryAfter = 30

// clusterRetryAfter is the Retry-After of a write the cluster store could
// not be reached for, in seconds: etcd elects a new leader within
// seconds, and a network partition or a restart of the cluster takes
// longer than one retry should wait.
const clusterRetryAfter = 10

// storageUnavailable is the answer to a request whose write the disk
// refused (store.ErrUnwritable), or for which the cluster store could not
// be reached (store.ErrUnavailable). Either way the request can be sent
// again later. The disk's refusal is rolled back: nothing changed. An etcd
// transaction is atomic, so nothing is half-written; but a commit whose
// answer was lost on the way may have been applied whole, which is why
// that detail does not promise that nothing changed.
func storageUnavailable(cause error) *apiError {
	if errors.Is(cause, store.ErrUnavailable) {
		return &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "storage_unavailable",
			Detail:     clusterUnreachable,
			cause:      cause,
			retryAfter: clusterRetryAfter}
	}
	return &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "storage_unavailable",
		Detail:     fmt.Sprintf("The data store cannot write (%s); nothing was changed. Retry later.", diskCause(cause)),
		cause:      cause,
		retryAfter: storageRetryAfter}
}

// clusterUnreachable is the detail of a write the cluster store could not
// be reached for.
const clusterUnreachable = "The cluster store (etcd) cannot be reached, so the change could not be confirmed; nothing was half-written. Retry later."

// diskCause names, for a client, why the disk refused a write.
func diskCause(err error) string {
	switch {
	case errors.Is(err, syscall.ENOSPC):
		return "the disk is full"
	case errors.Is(err, syscall.EDQUOT):
		return "the disk quota is exhausted"
	case errors.Is(err, syscall.EFBIG):
		return "the file size limit is reached"
	case errors.Is(err, syscall.EROFS):
		return "the file system is read-only"
	case errors.Is(err, syscall.EIO):
		return "the disk reports I/O errors"
	}
	return "the disk refused the write"
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Only our own types reach here; a failure is a programming error.
		panic(fmt.Sprintf("control: encoding response: %v", err))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(body)+1))
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

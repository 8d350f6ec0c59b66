/*
 * Stand-ins for the D-Bus functions that Debian's static libpcap refers to.
 *
 * libpcap can capture D-Bus messages ("dbus-system" and "dbus-session" devices); for that,
 * Debian builds it against libdbus-1, which loads libsystemd, libgcrypt, liblzma, libzstd,
 * liblz4, libcap and libgpg-error into every process that links libpcap: ten shared objects,
 * about 1 ms of every start of a one-destination `trace` (BENCHMARKS.md, "Fixed costs").
 * service-traceroute never captures D-Bus, so the build links libpcap statically (see
 * build.rs) and resolves its D-Bus references here: opening a D-Bus "device" fails with the
 * message below, the other functions are unreachable without a connection.
 *
 * DBusError's layout is libdbus-1's public ABI (dbus/dbus-errors.h): name, message, flags,
 * padding.
 */
#include <stddef.h>

typedef struct {
    const char *name;
    const char *message;
    unsigned int dummy;
    void *padding1;
} svctr_dbus_error;

static void *svctr_dbus_unavailable(svctr_dbus_error *error)
{
    if (error != NULL) {
        error->name = "org.freedesktop.DBus.Error.NotSupported";
        error->message = "D-Bus capture is not built into service-traceroute";
    }
    return NULL;
}

void *dbus_bus_get(int type, svctr_dbus_error *error) { (void)type; return svctr_dbus_unavailable(error); }
void *dbus_connection_open(const char *address, svctr_dbus_error *error) { (void)address; return svctr_dbus_unavailable(error); }
unsigned int dbus_error_is_set(const svctr_dbus_error *error) { return error != NULL && error->name != NULL; }
void dbus_error_free(svctr_dbus_error *error) { if (error != NULL) { error->name = NULL; error->message = NULL; } }

/* Only reachable with a connection, which the two functions above never give. */
unsigned int dbus_bus_register(void *c, svctr_dbus_error *e) { (void)c; svctr_dbus_unavailable(e); return 0; }
void dbus_bus_add_match(void *c, const char *rule, svctr_dbus_error *e) { (void)c; (void)rule; svctr_dbus_unavailable(e); }
void dbus_connection_flush(void *c) { (void)c; }
void *dbus_connection_pop_message(void *c) { (void)c; return NULL; }
unsigned int dbus_connection_read_write(void *c, int timeout) { (void)c; (void)timeout; return 0; }
unsigned int dbus_connection_send(void *c, void *m, void *serial) { (void)c; (void)m; (void)serial; return 0; }
void dbus_connection_set_max_received_size(void *c, long size) { (void)c; (void)size; }
void dbus_connection_unref(void *c) { (void)c; }
void dbus_free(void *p) { (void)p; }
void *dbus_message_demarshal(const char *s, int len, svctr_dbus_error *e) { (void)s; (void)len; return svctr_dbus_unavailable(e); }
unsigned int dbus_message_is_signal(void *m, const char *i, const char *n) { (void)m; (void)i; (void)n; return 0; }
unsigned int dbus_message_marshal(void *m, char **s, int *len) { (void)m; (void)s; (void)len; return 0; }
void dbus_message_unref(void *m) { (void)m; }

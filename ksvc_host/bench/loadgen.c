/*
 * loadgen: the load generator of ``ksvc bench echo``.
 *
 *     loadgen PORT CONNS MSGS SIZE [SEED]
 *
 * Opens CONNS TCP connections to 127.0.0.1:PORT and drives each through
 * MSGS request/response messages of SIZE bytes, one message in flight per
 * connection: send the message (all of it, over as many writes as it
 * takes), read until SIZE bytes of echo have arrived, check every byte,
 * record the round trip, send the next.
 *
 * Every connection has its own random payload; message k of a connection
 * is that payload with a per-message counter xored in, so an echo of an
 * earlier message (or of another connection's) cannot pass the check.
 *
 * On success it prints one line of JSON on stdout:
 *
 *     {"msgs": N, "seconds": S, "msgs_per_s": R, "p50_us": X, "p99_us": Y, "p999_us": Z, "max_us": M,
 *      "mean_us": A, "cpu_s": C}
 *
 * where cpu_s is this process's user + system CPU over the timed part.
 *
 * Exit status: 0 done; 1 bad arguments or a setup failure (connection
 * refused, out of memory); 2 an echoed byte differs from what was sent
 * (stderr names the connection, the message and the byte); 3 the server
 * closed or reset a connection, or nothing moved for 10 s (a connect
 * included).
 *
 * Build: cc -O2 -Wall -Wextra -o loadgen loadgen.c
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define EXIT_SETUP 1
#define EXIT_MISMATCH 2
#define EXIT_SERVER 3

#define STALL_NS (10LL * 1000000000LL) /* no byte sent or received for this long: the server stalled */
#define MAX_EVENTS 256

/* One connection: its socket, its payload and where its current message stands. */
struct conn {
    int fd;
    long msg;          /* index of the message in flight (0 .. msgs-1) */
    size_t sent;       /* bytes of it written so far */
    size_t got;        /* bytes of its echo read so far */
    int want_out;      /* registered for EPOLLOUT (a write was partial) */
    uint64_t sent_at;  /* CLOCK_MONOTONIC ns when its first byte was written */
    uint8_t *base;     /* the connection's random payload */
    uint8_t *out;      /* the message in flight: base with the message counter xored in */
    uint8_t *in;       /* the echo read so far (one spare byte to notice extra data) */
};

static int g_ep;
static size_t g_size;
static long g_msgs;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* splitmix64: a small, good-enough generator for payload bytes. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6
         + (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static int parse_long(const char *text, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/*
 * Make message number c->msg: the payload with a counter xored in byte by
 * byte. The counter is the message index times an odd constant, so its low
 * byte (xored into byte 0) differs between any two of 256 consecutive
 * messages, and its other bytes spread the change over the rest.
 */
static void make_message(struct conn *c)
{
    uint64_t ctr = ((uint64_t)c->msg + 1) * 0x9E3779B97F4A7C15ULL;
    uint8_t key[8];
    for (int j = 0; j < 8; j++)
        key[j] = (uint8_t)(ctr >> (8 * j));
    for (size_t i = 0; i < g_size; i++)
        c->out[i] = c->base[i] ^ key[i & 7];
}

static void watch(struct conn *c, int want_out)
{
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        perror("loadgen: epoll_ctl");
        exit(EXIT_SETUP);
    }
    c->want_out = want_out;
}

static void server_failed(const struct conn *c, long index, const char *what)
{
    fprintf(stderr, "loadgen: connection %ld message %ld: %s\n", index, c->msg, what);
    exit(EXIT_SERVER);
}

/* Write what is left of the message in flight; register for EPOLLOUT if the socket is full. Returns bytes written. */
static size_t send_some(struct conn *c, long index)
{
    size_t before = c->sent;
    while (c->sent < g_size) {
        ssize_t n = send(c->fd, c->out + c->sent, g_size - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        server_failed(c, index, n < 0 ? strerror(errno) : "send wrote nothing");
    }
    int want_out = c->sent < g_size;
    if (want_out != c->want_out)
        watch(c, want_out);
    return c->sent - before;
}

/* Start message c->msg: make its bytes, note the time, write it. */
static void start_message(struct conn *c, long index)
{
    make_message(c);
    c->sent = 0;
    c->got = 0;
    c->sent_at = now_ns();
    send_some(c, index);
}

/* Compare the first *len* bytes of the echo with what was sent; on a difference name the byte and exit 2. */
static void check_echo(const struct conn *c, long index, size_t len)
{
    if (memcmp(c->in, c->out, len) == 0)
        return;
    size_t i = 0;
    while (c->in[i] == c->out[i])
        i++;
    fprintf(stderr, "loadgen: connection %ld message %ld: echo differs at byte %zu: got 0x%02x, sent 0x%02x\n",
            index, c->msg, i, c->in[i], c->out[i]);
    exit(EXIT_MISMATCH);
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    long port, conns, msgs, size, seed_arg = -1;
    if (argc < 5 || argc > 6 || parse_long(argv[1], 1, 65535, &port) || parse_long(argv[2], 1, 100000, &conns)
        || parse_long(argv[3], 1, 1000000000L, &msgs) || parse_long(argv[4], 1, 64L << 20, &size)
        || (argc == 6 && parse_long(argv[5], 0, 0x7FFFFFFFFFFFFFFFL, &seed_arg))) {
        fprintf(stderr, "usage: %s PORT CONNS MSGS SIZE [SEED]\n", argv[0]);
        return EXIT_SETUP;
    }
    g_size = (size_t)size;
    g_msgs = msgs;
    uint64_t total = (uint64_t)conns * (uint64_t)msgs;
    uint64_t rng = seed_arg >= 0 ? (uint64_t)seed_arg : now_ns() ^ ((uint64_t)getpid() << 32);

    struct conn *cs = calloc((size_t)conns, sizeof *cs);
    uint64_t *lat = malloc(total * sizeof *lat);
    if (!cs || !lat) {
        fprintf(stderr, "loadgen: out of memory for %ld connections x %ld messages\n", conns, msgs);
        return EXIT_SETUP;
    }
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0) {
        perror("loadgen: epoll_create1");
        return EXIT_SETUP;
    }

    /* Connect one by one (blocking, so the server's accept order is ours), then go non-blocking. */
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (long i = 0; i < conns; i++) {
        struct conn *c = &cs[i];
        c->base = malloc(g_size);
        c->out = malloc(g_size);
        c->in = malloc(g_size + 1);
        if (!c->base || !c->out || !c->in) {
            fprintf(stderr, "loadgen: out of memory for connection %ld\n", i);
            return EXIT_SETUP;
        }
        for (size_t b = 0; b < g_size; b += 8) {
            uint64_t r = next_random(&rng);
            size_t n = g_size - b < 8 ? g_size - b : 8;
            memcpy(c->base + b, &r, n);
        }
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
            perror("loadgen: socket");
            return EXIT_SETUP;
        }
        /* SO_SNDTIMEO bounds connect() too: a server that stops accepting is a stall like any other. */
        struct timeval limit = {.tv_sec = STALL_NS / 1000000000LL};
        setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            int stalled = errno == EINPROGRESS || errno == EAGAIN || errno == ETIMEDOUT;
            fprintf(stderr, "loadgen: connection %ld: connect to 127.0.0.1:%ld: %s\n", i, port,
                    stalled ? "no progress for 10 s" : strerror(errno));
            return stalled ? EXIT_SERVER : EXIT_SETUP;
        }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(g_ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
            perror("loadgen: epoll_ctl");
            return EXIT_SETUP;
        }
    }

    /* The timed part: first message on every connection, then echo, check, next. */
    double cpu0 = cpu_seconds();
    uint64_t t0 = now_ns(), progress = t0;
    uint64_t done = 0;
    long active = conns;
    for (long i = 0; i < conns; i++)
        start_message(&cs[i], i);

    struct epoll_event events[MAX_EVENTS];
    while (active) {
        int n = epoll_wait(g_ep, events, MAX_EVENTS, 1000);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("loadgen: epoll_wait");
            return EXIT_SETUP;
        }
        uint64_t now = now_ns();
        if (n == 0) {
            if (now - progress >= (uint64_t)STALL_NS) {
                long waiting = 0;
                while (cs[waiting].msg >= g_msgs)
                    waiting++;
                fprintf(stderr, "loadgen: no progress for 10 s (%ld connections waiting; first: connection %ld "
                        "message %ld, %zu of %zu bytes sent, %zu echoed)\n",
                        active, waiting, cs[waiting].msg, cs[waiting].sent, g_size, cs[waiting].got);
                return EXIT_SERVER;
            }
            continue;
        }
        progress = now;
        for (int e = 0; e < n; e++) {
            struct conn *c = events[e].data.ptr;
            long index = c - cs;
            if (c->msg >= g_msgs)
                continue; /* finished (and unregistered) earlier in this batch */
            if (events[e].events & EPOLLOUT)
                send_some(c, index);
            if (!(events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                continue;
            /* Read what has arrived, at most one byte beyond the message to notice extra data. */
            ssize_t r = recv(c->fd, c->in + c->got, g_size + 1 - c->got, 0);
            if (r == 0)
                server_failed(c, index, "the server closed the connection");
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                    continue;
                server_failed(c, index, strerror(errno));
            }
            c->got += (size_t)r;
            if (c->got > c->sent) {
                /* More echo than was written: whatever it is, it is not ours. */
                check_echo(c, index, c->sent);
                fprintf(stderr, "loadgen: connection %ld message %ld: %zu bytes echoed, only %zu sent\n",
                        index, c->msg, c->got, c->sent);
                return EXIT_MISMATCH;
            }
            if (c->got < g_size)
                continue;
            check_echo(c, index, g_size);
            uint64_t end = now_ns();
            lat[done++] = end - c->sent_at;
            if (++c->msg < g_msgs) {
                start_message(c, index);
            } else {
                epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
                active--;
            }
        }
    }
    uint64_t t1 = now_ns();
    double cpu = cpu_seconds() - cpu0;

    qsort(lat, (size_t)done, sizeof *lat, compare_u64);
    /* The same percentiles as harness.latency_stats: ordered[n // 2] and ordered[min(n - 1, int(n * 0.99))]. */
    uint64_t p99_index = (uint64_t)((double)done * 0.99);
    if (p99_index > done - 1)
        p99_index = done - 1;
    double seconds = (double)(t1 - t0) / 1e9;
    double mean = 0;
    for (uint64_t i = 0; i < done; i++) mean += (double)lat[i];
    mean = done ? mean / (double)done : 0;
    printf("{\"msgs\": %llu, \"seconds\": %.6f, \"msgs_per_s\": %.1f, \"p50_us\": %.3f, \"p99_us\": %.3f, "
           "\"p999_us\": %.3f, \"max_us\": %.3f, \"mean_us\": %.3f, \"cpu_s\": %.6f}\n",
           (unsigned long long)done, seconds, (double)done / seconds, (double)lat[done / 2] / 1e3,
           (double)lat[p99_index] / 1e3, (double)lat[(uint64_t)((double)(done - 1) * 0.999)] / 1e3,
           (double)lat[done - 1] / 1e3, mean / 1e3, cpu);
    for (long i = 0; i < conns; i++) {
        close(cs[i].fd);
        free(cs[i].base);
        free(cs[i].out);
        free(cs[i].in);
    }
    free(cs);
    free(lat);
    close(g_ep);
    return 0;
}

/* pop3load: the POP3 load generator of postoffice's bench/ (compiled at run time by
 * bench/loadgen.py with gcc -O2; not part of the package).
 *
 * One binary, one mode per workload, every result one JSON object on stdout:
 *
 *   storm HOST PORT USERS_FILE CONC SECONDS WARMUP PROCS ONCE
 *       CONC clients loop connect, USER, PASS, STAT, QUIT (then wait for the server's
 *       close). Client c logs in as users c, c+CONC, c+2*CONC, ... so no two clients ever
 *       share a user. Sessions finishing in [WARMUP, WARMUP+SECONDS) are counted; sessions
 *       in flight at the end are drained, not cut. ONCE=1: every user exactly once, untimed.
 *   retr HOST PORT USER PASS DEPTH
 *       Log in, STAT, RETR every message with DEPTH commands in flight, QUIT.
 *   session HOST PORT USER PASS
 *       Times connect..STAT reply, then LIST, then UIDL, then QUIT.
 *   uidl HOST PORT USER PASS OUTFILE
 *       Writes the UIDLs of the maildrop, one a line.
 *   sync HOST PORT USER PASS KNOWNFILE
 *       Keep-mode sync: log in, UIDL, RETR each message whose UIDL is not in KNOWNFILE,
 *       QUIT; timed from connect to the QUIT reply.
 *   idle HOST PORT USERS_FILE N WINDOW PACE
 *       Opens N authenticated sessions (at most WINDOW logging in at once; a login stuck
 *       for 10 s is retried), prints a JSON line, waits for a line on stdin (the caller
 *       measures the server's memory), sends NOOP on all of them at once (in batches of 64,
 *       reading replies in between) and prints a JSON line, then (PACE > 0) once more
 *       spread evenly over PACE seconds and prints a JSON line, then QUITs them all.
 *   responder PORT PROCS MESSAGES MSGSIZE
 *       A do-nothing POP3 responder: +OK to everything, MESSAGES messages of MSGSIZE
 *       octets for STAT/RETR. Prints "READY <port>" once listening. Used to show the
 *       load generator's own ceiling.
 *
 * Every mode reports client_cpu: this process's (and its children's) CPU seconds divided by
 * the wall time of the measured interval, i.e. the share of one core the load generator used.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ common helpers */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_of(int who) {
    struct rusage ru;
    getrusage(who, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("pop3load: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static struct sockaddr_in server_addr;

static void set_addr(const char *host, const char *port) {
    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)atoi(port));
    if (inet_pton(AF_INET, host, &server_addr.sin_addr) != 1) die("bad IPv4 address %s", host);
}

/* A copy of a server line safe to put between JSON quotes. */
static void json_safe(char *dst, size_t cap, const char *src, size_t len) {
    size_t j = 0;
    for (size_t i = 0; i < len && j + 1 < cap; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c == '\r' || c == '\n') break;
        dst[j++] = (c < 0x20 || c > 0x7e || c == '"' || c == '\\') ? '?' : (char)c;
    }
    dst[j] = '\0';
}

typedef struct {
    char *name;
    char *pass;
} user_t;

static user_t *users;
static int nusers;

static void load_users(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) die("cannot open %s: %s", path, strerror(errno));
    char line[512];
    int cap = 1024;
    users = malloc(sizeof(user_t) * (size_t)cap);
    while (fgets(line, sizeof line, f)) {
        char *name = strtok(line, " \t\r\n");
        char *pass = strtok(NULL, " \t\r\n");
        if (!name || !pass) continue;
        if (nusers == cap) {
            cap *= 2;
            users = realloc(users, sizeof(user_t) * (size_t)cap);
        }
        users[nusers].name = strdup(name);
        users[nusers].pass = strdup(pass);
        nusers++;
    }
    fclose(f);
    if (nusers == 0) die("no users in %s", path);
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The q-quantile (0..1) of n sorted microsecond samples, in milliseconds. */
static double quantile_ms(const uint32_t *sorted, size_t n, double q) {
    if (n == 0) return -1;
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    if (i >= n) i = n - 1;
    return sorted[i] / 1000.0;
}

static int new_socket(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* ------------------------------------------------------- event-driven short sessions */

enum {
    S_CONNECT,
    S_GREET,
    S_USER,
    S_PASS,
    S_STAT,
    S_QUIT,
    S_EOF,
    S_IDLE,
    S_NOOP,
    S_FREE,
};

typedef struct {
    int fd;
    int state;
    int slot;      /* storm: client number; idle: session number */
    int user;      /* index into users */
    int attempts;  /* idle: login attempts so far */
    double t_start;
    double t_sent;
    int len;
    char buf[1024];
} conn_t;

typedef struct {
    long sessions;
    long errors;
    long inuse;
    long timeouts;
    long nlat;
    double cpu;
    double wall;
    char first_error[200];
} presult_t;

static int epfd;

static void note_error(presult_t *res, const char *what, const char *line, size_t len) {
    res->errors++;
    if (res->first_error[0] == '\0') {
        char safe[150];
        json_safe(safe, sizeof safe, line ? line : "", line ? len : 0);
        snprintf(res->first_error, sizeof res->first_error, "%s: %s", what, safe);
    }
}

static void conn_close(conn_t *c) {
    /* No EPOLL_CTL_DEL: closing the only descriptor of a socket takes it out of the set. */
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->len = 0;
}

static int conn_open(conn_t *c) {
    c->len = 0;
    c->fd = new_socket();
    if (c->fd < 0) return -1;
    c->state = S_CONNECT;
    c->t_start = now();
    if (connect(c->fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0 &&
        errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    /* Readable only: the greeting shows the connection is up, and a failed connect
     * reports EPOLLERR; waiting for EPOLLOUT first would cost an event, a getsockopt
     * and an EPOLL_CTL_MOD per connection. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

static int conn_send(conn_t *c, const char *fmt, ...) {
    char out[600];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, sizeof out, fmt, ap);
    va_end(ap);
    ssize_t w = send(c->fd, out, (size_t)n, MSG_NOSIGNAL);
    return w == n ? 0 : -1; /* a few bytes into an empty socket buffer: all or error */
}

/* The first event of a connection; 0 when connected, -1 when the connect failed. */
static int conn_connected(conn_t *c, uint32_t events) {
    if (events & EPOLLERR) return -1;
    c->state = S_GREET;
    return 0;
}

/* Reads what is there. Returns 1 on EOF, -1 on error, 0 otherwise. A read shorter than
 * the room left took everything queued, so no second recv is made to see EAGAIN, unless
 * the peer has closed (EPOLLRDHUP), when reading on finds the end. */
static int conn_read(conn_t *c, uint32_t events) {
    for (;;) {
        if (c->len >= (int)sizeof c->buf) return -1;
        size_t room = sizeof c->buf - (size_t)c->len;
        ssize_t r = recv(c->fd, c->buf + c->len, room, 0);
        if (r > 0) {
            c->len += (int)r;
            if ((size_t)r < room && !(events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) return 0;
            continue;
        }
        if (r == 0) return 1;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        if (errno == EINTR) continue;
        return -1;
    }
}

/* Pops one line (without CRLF) from the buffer into line; returns its length or -1. */
static int conn_line(conn_t *c, char *line, int cap) {
    char *nl = memchr(c->buf, '\n', (size_t)c->len);
    if (!nl) return -1;
    int n = (int)(nl - c->buf) + 1;
    int copy = n < cap - 1 ? n : cap - 1;
    memcpy(line, c->buf, (size_t)copy);
    line[copy] = '\0';
    memmove(c->buf, c->buf + n, (size_t)(c->len - n));
    c->len -= n;
    return copy;
}

/* ------------------------------------------------------------------------- storm */

typedef struct {
    int conc, procs, proc, once;
    double t_begin, t0, t1;
    presult_t *res;
    uint32_t *lat;
    long latcap;
    int *cursor; /* per slot: next user index */
    long remaining; /* once: sessions still to start */
} storm_t;

/* The next user of a slot, or -1 when it has done its share (once mode). */
static int storm_next_user(storm_t *st, int slot) {
    int u = st->cursor[slot];
    if (u >= nusers) {
        if (st->once) return -1;
        u = slot % nusers;
    }
    st->cursor[slot] = u + st->conc;
    return u;
}

static void storm_start(storm_t *st, conn_t *c) {
    double t = now();
    if (!st->once && t >= st->t1) {
        c->state = S_FREE;
        return;
    }
    int u = storm_next_user(st, c->slot);
    if (u < 0) {
        c->state = S_FREE;
        return;
    }
    c->user = u;
    if (conn_open(c) < 0) {
        note_error(st->res, "connect", strerror(errno), strlen(strerror(errno)));
        c->state = S_FREE;
    }
}

static void storm_fail(storm_t *st, conn_t *c, const char *what, const char *line, int len) {
    if (line && strstr(line, "IN-USE")) st->res->inuse++;
    note_error(st->res, what, line, line ? (size_t)len : 0);
    conn_close(c);
    storm_start(st, c);
}

static void storm_event(storm_t *st, conn_t *c, uint32_t events) {
    if (c->state == S_CONNECT) {
        if (conn_connected(c, events) < 0) {
            storm_fail(st, c, "connect", "refused", 7);
            return;
        }
        if (!(events & EPOLLIN)) return;
    }
    int rc = conn_read(c, events);
    char line[512];
    int n;
    while ((n = conn_line(c, line, sizeof line)) >= 0) {
        int ok = strncmp(line, "+OK", 3) == 0;
        switch (c->state) {
        case S_GREET:
            if (!ok || conn_send(c, "USER %s\r\n", users[c->user].name)) goto bad;
            c->state = S_USER;
            break;
        case S_USER:
            if (!ok || conn_send(c, "PASS %s\r\n", users[c->user].pass)) goto bad;
            c->state = S_PASS;
            break;
        case S_PASS:
            if (!ok || conn_send(c, "STAT\r\n")) goto bad;
            c->state = S_STAT;
            break;
        case S_STAT:
            if (!ok || conn_send(c, "QUIT\r\n")) goto bad;
            c->state = S_QUIT;
            break;
        case S_QUIT: {
            if (!ok) goto bad;
            double t = now();
            if (st->once || (t >= st->t0 && t < st->t1)) {
                st->res->sessions++;
                if (st->res->nlat < st->latcap)
                    st->lat[st->res->nlat++] = (uint32_t)((t - c->t_start) * 1e6);
            }
            c->state = S_EOF;
            break;
        }
        default:
            break; /* S_EOF: ignore anything after the QUIT reply */
        }
        continue;
    bad:
        storm_fail(st, c, "reply", line, n);
        return;
    }
    if (rc == 1) {
        if (c->state == S_EOF) {
            conn_close(c);
            storm_start(st, c);
        } else {
            storm_fail(st, c, "closed early", "EOF", 3);
        }
    } else if (rc < 0) {
        storm_fail(st, c, "read", strerror(errno), (int)strlen(strerror(errno)));
    }
}

static void storm_proc(storm_t *st) {
    epfd = epoll_create1(EPOLL_CLOEXEC);
    int mine = 0;
    for (int s = st->proc; s < st->conc; s += st->procs) mine++;
    conn_t *conns = calloc((size_t)mine, sizeof(conn_t));
    st->cursor = calloc((size_t)st->conc, sizeof(int));
    for (int s = 0; s < st->conc; s++) st->cursor[s] = s;
    int k = 0;
    for (int s = st->proc; s < st->conc; s += st->procs) {
        conns[k].slot = s;
        conns[k].fd = -1;
        storm_start(st, &conns[k]);
        k++;
    }
    double cpu0 = -1, wall0 = 0;
    if (st->once) {
        cpu0 = cpu_of(RUSAGE_SELF);
        wall0 = now();
    }
    struct epoll_event evs[256];
    int closing_logged = 0;
    for (;;) {
        double t = now();
        if (!st->once && cpu0 < 0 && t >= st->t0) {
            cpu0 = cpu_of(RUSAGE_SELF);
            wall0 = t;
        }
        if (!st->once && !closing_logged && t >= st->t1) {
            st->res->cpu = cpu_of(RUSAGE_SELF) - cpu0;
            st->res->wall = t - wall0;
            closing_logged = 1;
        }
        int active = 0;
        for (int i = 0; i < mine; i++) {
            conn_t *c = &conns[i];
            if (c->state == S_FREE) continue;
            active++;
            if (t - c->t_start > 10) { /* stuck (a dropped connection): give up on it */
                st->res->timeouts++;
                storm_fail(st, c, "timeout", "no reply for 10 s", 17);
            }
        }
        if (!active) break;
        if (closing_logged && t > st->t1 + 15) break; /* drain at most 15 s */
        int timeout = 20;
        int n = epoll_wait(epfd, evs, 256, timeout);
        for (int i = 0; i < n; i++) storm_event(st, evs[i].data.ptr, evs[i].events);
    }
    if (st->once) {
        st->res->cpu = cpu_of(RUSAGE_SELF) - cpu0;
        st->res->wall = now() - wall0;
    }
}

static int mode_storm(int argc, char **argv) {
    if (argc != 10) die("usage: storm HOST PORT USERS_FILE CONC SECONDS WARMUP PROCS ONCE");
    set_addr(argv[2], argv[3]);
    load_users(argv[4]);
    int conc = atoi(argv[5]);
    double seconds = atof(argv[6]), warmup = atof(argv[7]);
    int procs = atoi(argv[8]), once = atoi(argv[9]);
    if (conc < 1 || procs < 1 || procs > conc) die("bad CONC/PROCS");
    raise_nofile();
    long latcap = 4000000;
    presult_t *res = mmap(NULL, sizeof(presult_t) * (size_t)procs, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    uint32_t *lat = mmap(NULL, sizeof(uint32_t) * (size_t)latcap * (size_t)procs,
                         PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (res == MAP_FAILED || lat == MAP_FAILED) die("mmap failed");
    memset(res, 0, sizeof(presult_t) * (size_t)procs);
    double t_begin = now();
    pid_t parent = getpid();
    for (int p = 0; p < procs; p++) {
        pid_t pid = fork();
        if (pid < 0) die("fork: %s", strerror(errno));
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent) _exit(1);
            storm_t st = {.conc = conc, .procs = procs, .proc = p, .once = once,
                          .t_begin = t_begin, .t0 = t_begin + warmup,
                          .t1 = t_begin + warmup + seconds, .res = &res[p],
                          .lat = lat + (size_t)latcap * (size_t)p, .latcap = latcap};
            storm_proc(&st);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {
    }
    long sessions = 0, errors = 0, inuse = 0, timeouts = 0, nlat = 0;
    double cpu = 0, wall = 0;
    const char *first_error = "";
    for (int p = 0; p < procs; p++) {
        sessions += res[p].sessions;
        errors += res[p].errors;
        inuse += res[p].inuse;
        timeouts += res[p].timeouts;
        nlat += res[p].nlat;
        cpu += res[p].cpu;
        if (res[p].wall > wall) wall = res[p].wall;
        if (!first_error[0] && res[p].first_error[0]) first_error = res[p].first_error;
    }
    uint32_t *all = malloc(sizeof(uint32_t) * (size_t)(nlat ? nlat : 1));
    long k = 0;
    for (int p = 0; p < procs; p++) {
        memcpy(all + k, lat + (size_t)latcap * (size_t)p, sizeof(uint32_t) * (size_t)res[p].nlat);
        k += res[p].nlat;
    }
    qsort(all, (size_t)nlat, sizeof(uint32_t), cmp_u32);
    double span = once ? wall : seconds;
    printf("{\"mode\": \"storm\", \"sessions\": %ld, \"seconds\": %.4f, \"rate\": %.2f, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"errors\": %ld, \"inuse\": %ld, "
           "\"timeouts\": %ld, \"client_cpu\": %.4f, \"procs\": %d, \"concurrency\": %d, "
           "\"first_error\": \"%s\"}\n",
           sessions, span, span > 0 ? (double)sessions / span : 0, quantile_ms(all, (size_t)nlat, 0.5),
           quantile_ms(all, (size_t)nlat, 0.99), errors, inuse, timeouts, wall > 0 ? cpu / wall : 0,
           procs, conc, first_error);
    return 0;
}

/* -------------------------------------------------------------------------- idle */

/* One NOOP on every idle session and the latency of each reply. PACE 0: all at once (64
 * sends, then the replies that are in, and so on); PACE > 0: session i sends at
 * i * PACE / n seconds, an even stream. Prints one JSON line. */
static void noop_round(conn_t *conns, int n, double pace, presult_t *res, long *lost) {
    struct epoll_event evs[512];
    char line[512];
    uint32_t *lat = calloc((size_t)n + 1, sizeof(uint32_t));
    long answered = 0, sent = 0, noop_errors = 0, pending = 0;
    int i = 0;
    double t0 = now(), deadline = t0 + pace + 60;
    double cpu0 = cpu_of(RUSAGE_SELF);
    while ((pending > 0 || i < n) && now() < deadline) {
        double t = now();
        for (int b = 0; b < 64 && i < n; i++) {
            conn_t *c = &conns[i];
            if (c->state != S_IDLE) continue;
            if (pace > 0 && t0 + pace * i / n > t) break;
            c->t_sent = now();
            if (conn_send(c, "NOOP\r\n")) {
                noop_errors++;
                conn_close(c);
                c->state = S_FREE;
            } else {
                c->state = S_NOOP;
                sent++;
                pending++;
            }
            b++;
        }
        int timeout = 50;
        if (i < n) {
            double due = pace > 0 ? t0 + pace * i / n - now() : 0;
            timeout = due > 0 ? (int)(due * 1000) : 0;
        }
        int k = epoll_wait(epfd, evs, 512, timeout);
        for (int e = 0; e < k; e++) {
            conn_t *c = evs[e].data.ptr;
            int rc = conn_read(c, evs[e].events);
            int m;
            while ((m = conn_line(c, line, sizeof line)) >= 0) {
                if (c->state != S_NOOP) continue;
                pending--;
                c->state = S_IDLE;
                if (strncmp(line, "+OK", 3) == 0) {
                    lat[answered++] = (uint32_t)((now() - c->t_sent) * 1e6);
                } else {
                    noop_errors++;
                    note_error(res, "noop", line, (size_t)m);
                }
            }
            if (rc != 0) {
                if (c->state == S_NOOP) pending--;
                (*lost)++;
                conn_close(c);
                c->state = S_FREE;
            }
        }
    }
    double secs = now() - t0;
    double cpu = cpu_of(RUSAGE_SELF) - cpu0;
    qsort(lat, (size_t)answered, sizeof(uint32_t), cmp_u32);
    printf("{\"mode\": \"idle-noop\", \"pace\": %.3f, \"sent\": %ld, \"answered\": %ld, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f, \"seconds\": %.4f, "
           "\"errors\": %ld, \"lost\": %ld, \"client_cpu\": %.4f}\n",
           pace, sent, answered, quantile_ms(lat, (size_t)answered, 0.5),
           quantile_ms(lat, (size_t)answered, 0.99), quantile_ms(lat, (size_t)answered, 1.0), secs,
           noop_errors, *lost, secs > 0 ? cpu / secs : 0);
    fflush(stdout);
    free(lat);
}

static int mode_idle(int argc, char **argv) {
    if (argc != 8) die("usage: idle HOST PORT USERS_FILE N WINDOW PACE");
    set_addr(argv[2], argv[3]);
    load_users(argv[4]);
    int n = atoi(argv[5]), window = atoi(argv[6]);
    double pace = atof(argv[7]);
    if (n > nusers) die("%d sessions need %d users, the file has %d", n, n, nusers);
    raise_nofile();
    epfd = epoll_create1(EPOLL_CLOEXEC);
    conn_t *conns = calloc((size_t)n, sizeof(conn_t));
    presult_t res;
    memset(&res, 0, sizeof res);
    long opened = 0, failed = 0, logging_in = 0, lost = 0;
    int next = 0;
    double t0 = now(), cpu0 = cpu_of(RUSAGE_SELF);
    double deadline = t0 + 300, next_scan = t0 + 1;
    long timeouts = 0;
    struct epoll_event evs[512];
    char line[512];
    /* Phase 1: open and log in, at most WINDOW at once; [IN-USE], errors and logins stuck
     * for 10 s (a connection the server's full accept queue dropped) are retried. */
    while (opened + failed < n && now() < deadline) {
        if (now() >= next_scan) {
            double t = now();
            next_scan = t + 1;
            for (int j = 0; j < next; j++) {
                conn_t *c = &conns[j];
                if (c->fd < 0 || c->state == S_IDLE || c->state == S_FREE) continue;
                if (t - c->t_start < 10) continue;
                timeouts++;
                conn_close(c);
                if (c->attempts < 5 && conn_open(c) == 0) {
                    c->attempts++;
                } else {
                    failed++;
                    logging_in--;
                    c->state = S_FREE;
                }
            }
        }
        while (logging_in < window && next < n) {
            conn_t *c = &conns[next];
            c->slot = next;
            c->user = next;
            c->attempts = 1;
            if (conn_open(c) < 0) {
                note_error(&res, "connect", strerror(errno), strlen(strerror(errno)));
                failed++;
            } else {
                logging_in++;
            }
            next++;
        }
        int k = epoll_wait(epfd, evs, 512, 50);
        for (int i = 0; i < k; i++) {
            conn_t *c = evs[i].data.ptr;
            int bad = 0, eof = 0;
            if (c->state == S_CONNECT) {
                if (conn_connected(c, evs[i].events) < 0) {
                    bad = 1;
                    snprintf(line, sizeof line, "connect refused");
                } else if (!(evs[i].events & EPOLLIN)) {
                    continue;
                }
            }
            if (!bad) {
                int rc = conn_read(c, evs[i].events);
                int m;
                while (!bad && (m = conn_line(c, line, sizeof line)) >= 0) {
                    int ok = strncmp(line, "+OK", 3) == 0;
                    if (!ok) {
                        bad = 1;
                        break;
                    }
                    if (c->state == S_GREET) {
                        bad = conn_send(c, "USER %s\r\n", users[c->user].name);
                        c->state = S_USER;
                    } else if (c->state == S_USER) {
                        bad = conn_send(c, "PASS %s\r\n", users[c->user].pass);
                        c->state = S_PASS;
                    } else if (c->state == S_PASS) {
                        c->state = S_IDLE;
                        opened++;
                        logging_in--;
                    }
                }
                if (rc != 0 && !bad) {
                    eof = 1;
                    snprintf(line, sizeof line, rc > 0 ? "EOF" : "read error");
                }
            }
            if (bad || eof) {
                if (c->state == S_IDLE) { /* an open session was closed by the server */
                    lost++;
                    opened--;
                    logging_in++;
                }
                if (strstr(line, "IN-USE")) res.inuse++;
                note_error(&res, "login", line, strlen(line));
                conn_close(c);
                if (c->attempts < 5 && conn_open(c) == 0) {
                    c->attempts++;
                } else {
                    failed++;
                    logging_in--;
                    c->state = S_FREE;
                }
            }
        }
    }
    double open_s = now() - t0;
    double open_cpu = cpu_of(RUSAGE_SELF) - cpu0;
    printf("{\"mode\": \"idle-open\", \"requested\": %d, \"opened\": %ld, \"seconds\": %.4f, "
           "\"errors\": %ld, \"inuse\": %ld, \"timeouts\": %ld, \"failed\": %ld, "
           "\"client_cpu\": %.4f, \"first_error\": \"%s\"}\n",
           n, opened, open_s, res.errors, res.inuse, timeouts, failed,
           open_s > 0 ? open_cpu / open_s : 0, res.first_error);
    fflush(stdout);
    char go[64];
    if (!fgets(go, sizeof go, stdin)) return 0;

    /* Phase 2: NOOP on every open session, all at once, then paced over PACE seconds. */
    noop_round(conns, n, 0, &res, &lost);
    if (pace > 0) noop_round(conns, n, pace, &res, &lost);

    /* Phase 3: QUIT everything, wait (bounded) for the server to close. */
    long open_now = 0;
    for (int j = 0; j < n; j++) {
        conn_t *c = &conns[j];
        if (c->fd < 0) continue;
        if (c->state == S_IDLE && conn_send(c, "QUIT\r\n") == 0) {
            c->state = S_EOF;
            open_now++;
        } else {
            conn_close(c);
        }
    }
    deadline = now() + 30;
    while (open_now > 0 && now() < deadline) {
        int k = epoll_wait(epfd, evs, 512, 100);
        for (int e = 0; e < k; e++) {
            conn_t *c = evs[e].data.ptr;
            int rc = conn_read(c, evs[e].events);
            c->len = 0;
            if (rc != 0) {
                conn_close(c);
                open_now--;
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------- blocking single sessions */

typedef struct {
    int fd;
    char *buf;
    size_t cap, start, end;
    long long total;
} reader_t;

static void rd_init(reader_t *r, int fd) {
    r->fd = fd;
    r->cap = 4 << 20;
    r->buf = malloc(r->cap);
    r->start = r->end = 0;
    r->total = 0;
}

/* The next line (CRLF included) or NULL at EOF; *len gets its length. */
static char *rd_line(reader_t *r, size_t *len) {
    for (;;) {
        char *nl = memchr(r->buf + r->start, '\n', r->end - r->start);
        if (nl) {
            char *line = r->buf + r->start;
            *len = (size_t)(nl - line) + 1;
            r->start += *len;
            return line;
        }
        if (r->start > 0) {
            memmove(r->buf, r->buf + r->start, r->end - r->start);
            r->end -= r->start;
            r->start = 0;
        }
        if (r->end == r->cap) die("line longer than %zu octets", r->cap);
        ssize_t n = recv(r->fd, r->buf + r->end, r->cap - r->end, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return NULL;
        r->end += (size_t)n;
        r->total += n;
    }
}

static char *expect_ok(reader_t *r, const char *what) {
    size_t len;
    char *line = rd_line(r, &len);
    if (!line) die("%s: connection closed", what);
    if (strncmp(line, "+OK", 3) != 0) {
        char safe[200];
        json_safe(safe, sizeof safe, line, len);
        die("%s: %s", what, safe);
    }
    return line;
}

/* Reads a multi-line body up to the "." line; returns the number of lines. */
static long read_body(reader_t *r, void (*each)(char *, size_t, void *), void *arg) {
    long lines = 0;
    for (;;) {
        size_t len;
        char *line = rd_line(r, &len);
        if (!line) die("connection closed inside a multi-line reply");
        if (len >= 2 && line[0] == '.' && (line[1] == '\r' || line[1] == '\n')) return lines;
        if (each) each(line, len, arg);
        lines++;
    }
}

static void send_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t w = send(fd, data, len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            die("send: %s", strerror(errno));
        }
        data += w;
        len -= (size_t)w;
    }
}

static void sendf(int fd, const char *fmt, ...) {
    char out[600];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, sizeof out, fmt, ap);
    va_end(ap);
    send_all(fd, out, (size_t)n);
}

static int inuse_retries;

/* Connects and logs in; retries (20 ms apart, up to 10 s) while the maildrop is [IN-USE]
 * by a session the server is still closing. *t_connect gets the successful connect time. */
static int login(reader_t *r, const char *user, const char *pass, double *t_connect) {
    for (int attempt = 0; attempt < 500; attempt++) {
        double t = now();
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0)
            die("connect: %s", strerror(errno));
        if (r->buf) free(r->buf);
        rd_init(r, fd);
        expect_ok(r, "greeting");
        sendf(fd, "USER %s\r\n", user);
        expect_ok(r, "USER");
        sendf(fd, "PASS %s\r\n", pass);
        size_t len;
        char *line = rd_line(r, &len);
        if (!line) die("PASS: connection closed");
        if (strncmp(line, "+OK", 3) == 0) {
            if (t_connect) *t_connect = t;
            return fd;
        }
        char safe[200];
        json_safe(safe, sizeof safe, line, len);
        if (!strstr(safe, "IN-USE")) die("PASS: %s", safe);
        inuse_retries++;
        close(fd);
        usleep(20000);
    }
    die("maildrop stayed [IN-USE]");
    return -1;
}

/* QUIT, then wait for the server to close (so a following login finds the lock free). */
static void quit(reader_t *r) {
    sendf(r->fd, "QUIT\r\n");
    expect_ok(r, "QUIT");
    size_t len;
    while (rd_line(r, &len)) {
    }
    close(r->fd);
}

static int mode_retr(int argc, char **argv) {
    if (argc != 7) die("usage: retr HOST PORT USER PASS DEPTH");
    set_addr(argv[2], argv[3]);
    int depth = atoi(argv[6]);
    if (depth < 1) die("bad DEPTH");
    reader_t r = {0};
    int fd = login(&r, argv[4], argv[5], NULL);
    sendf(fd, "STAT\r\n");
    char *stat = expect_ok(&r, "STAT");
    long count = strtol(stat + 3, NULL, 10);
    long long before = r.total - (long long)(r.end - r.start);
    double t0 = now(), cpu0 = cpu_of(RUSAGE_SELF);
    long sent = 0, done = 0;
    char batch[64 * 32];
    while (done < count) {
        size_t used = 0;
        while (sent < count && sent - done < depth && used + 32 < sizeof batch) {
            used += (size_t)snprintf(batch + used, sizeof batch - used, "RETR %ld\r\n", ++sent);
        }
        if (used) send_all(fd, batch, used);
        expect_ok(&r, "RETR");
        read_body(&r, NULL, NULL);
        done++;
    }
    double secs = now() - t0, cpu = cpu_of(RUSAGE_SELF) - cpu0;
    long long octets = r.total - (long long)(r.end - r.start) - before;
    quit(&r);
    printf("{\"mode\": \"retr\", \"messages\": %ld, \"octets\": %lld, \"seconds\": %.4f, "
           "\"mb_s\": %.2f, \"depth\": %d, \"client_cpu\": %.4f, \"inuse_retries\": %d}\n",
           count, octets, secs, secs > 0 ? (double)octets / 1e6 / secs : 0, depth,
           secs > 0 ? cpu / secs : 0, inuse_retries);
    return 0;
}

static int mode_session(int argc, char **argv) {
    if (argc != 6) die("usage: session HOST PORT USER PASS");
    set_addr(argv[2], argv[3]);
    reader_t r = {0};
    double t_connect;
    double cpu0 = cpu_of(RUSAGE_SELF);
    int fd = login(&r, argv[4], argv[5], &t_connect);
    sendf(fd, "STAT\r\n");
    char *stat = expect_ok(&r, "STAT");
    double t_stat = now();
    long count = strtol(stat + 3, NULL, 10);
    sendf(fd, "LIST\r\n");
    expect_ok(&r, "LIST");
    long listed = read_body(&r, NULL, NULL);
    double t_list = now();
    sendf(fd, "UIDL\r\n");
    expect_ok(&r, "UIDL");
    long uidls = read_body(&r, NULL, NULL);
    double t_uidl = now();
    double cpu = cpu_of(RUSAGE_SELF) - cpu0, wall = t_uidl - t_connect;
    quit(&r);
    printf("{\"mode\": \"session\", \"count\": %ld, \"listed\": %ld, \"uidls\": %ld, "
           "\"login_stat\": %.5f, \"list\": %.5f, \"uidl\": %.5f, \"client_cpu\": %.4f, "
           "\"inuse_retries\": %d}\n",
           count, listed, uidls, t_stat - t_connect, t_list - t_stat, t_uidl - t_list,
           wall > 0 ? cpu / wall : 0, inuse_retries);
    return 0;
}

/* The UIDL of a "n uidl\r\n" line: pointer and length. */
static char *uidl_of(char *line, size_t len, size_t *ulen) {
    char *sp = memchr(line, ' ', len);
    if (!sp) die("bad UIDL line");
    char *u = sp + 1;
    size_t n = len - (size_t)(u - line);
    while (n > 0 && (u[n - 1] == '\r' || u[n - 1] == '\n')) n--;
    *ulen = n;
    return u;
}

static void write_uidl(char *line, size_t len, void *arg) {
    size_t n;
    char *u = uidl_of(line, len, &n);
    fwrite(u, 1, n, (FILE *)arg);
    fputc('\n', (FILE *)arg);
}

static int mode_uidl(int argc, char **argv) {
    if (argc != 7) die("usage: uidl HOST PORT USER PASS OUTFILE");
    set_addr(argv[2], argv[3]);
    FILE *out = fopen(argv[6], "w");
    if (!out) die("cannot write %s", argv[6]);
    reader_t r = {0};
    int fd = login(&r, argv[4], argv[5], NULL);
    sendf(fd, "UIDL\r\n");
    expect_ok(&r, "UIDL");
    long n = read_body(&r, write_uidl, out);
    fclose(out);
    quit(&r);
    printf("{\"mode\": \"uidl\", \"count\": %ld}\n", n);
    return 0;
}

static char **known;
static long nknown;

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

typedef struct {
    long *numbers;
    long count;
    long cap;
} wanted_t;

static void check_uidl(char *line, size_t len, void *arg) {
    wanted_t *w = arg;
    size_t n;
    char *u = uidl_of(line, len, &n);
    char key[128];
    if (n >= sizeof key) n = sizeof key - 1;
    memcpy(key, u, n);
    key[n] = '\0';
    char *k = key;
    if (bsearch(&k, known, (size_t)nknown, sizeof(char *), cmp_str)) return;
    if (w->count == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 64;
        w->numbers = realloc(w->numbers, sizeof(long) * (size_t)w->cap);
    }
    w->numbers[w->count++] = strtol(line, NULL, 10);
}

static int mode_sync(int argc, char **argv) {
    if (argc != 7) die("usage: sync HOST PORT USER PASS KNOWNFILE");
    set_addr(argv[2], argv[3]);
    FILE *f = fopen(argv[6], "r");
    if (!f) die("cannot read %s", argv[6]);
    long cap = 1024;
    known = malloc(sizeof(char *) * (size_t)cap);
    char line[256];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (nknown == cap) {
            cap *= 2;
            known = realloc(known, sizeof(char *) * (size_t)cap);
        }
        known[nknown++] = strdup(line);
    }
    fclose(f);
    qsort(known, (size_t)nknown, sizeof(char *), cmp_str);
    reader_t r = {0};
    double t0, cpu0 = cpu_of(RUSAGE_SELF);
    int fd = login(&r, argv[4], argv[5], &t0);
    sendf(fd, "UIDL\r\n");
    expect_ok(&r, "UIDL");
    wanted_t w = {0};
    long total = read_body(&r, check_uidl, &w);
    long long octets = 0;
    for (long i = 0; i < w.count; i++) {
        sendf(fd, "RETR %ld\r\n", w.numbers[i]);
        long long before = r.total - (long long)(r.end - r.start);
        expect_ok(&r, "RETR");
        read_body(&r, NULL, NULL);
        octets += r.total - (long long)(r.end - r.start) - before;
    }
    sendf(fd, "QUIT\r\n");
    expect_ok(&r, "QUIT");
    double secs = now() - t0, cpu = cpu_of(RUSAGE_SELF) - cpu0;
    size_t len;
    while (rd_line(&r, &len)) {
    }
    close(fd);
    printf("{\"mode\": \"sync\", \"total\": %ld, \"new\": %ld, \"octets\": %lld, \"seconds\": %.5f, "
           "\"client_cpu\": %.4f, \"inuse_retries\": %d}\n",
           total, w.count, octets, secs, secs > 0 ? cpu / secs : 0, inuse_retries);
    return 0;
}

/* --------------------------------------------------------------------- responder */

typedef struct {
    int fd;
    int closing;
    int inlen;
    char in[1024];
    char *out;
    size_t outlen, outcap, outpos;
} rconn_t;

static char *message;
static size_t message_len;
static long messages;

static void out_append(rconn_t *c, const char *data, size_t len) {
    if (c->outlen + len > c->outcap) {
        while (c->outlen + len > c->outcap) c->outcap = c->outcap ? c->outcap * 2 : 4096;
        c->out = realloc(c->out, c->outcap);
    }
    memcpy(c->out + c->outlen, data, len);
    c->outlen += len;
}

static void rconn_free(rconn_t *c) {
    close(c->fd);
    free(c->out);
    free(c);
}

/* Writes what it can; returns -1 when the connection is finished (closed). */
static int rconn_flush(rconn_t *c) {
    while (c->outpos < c->outlen) {
        ssize_t w = send(c->fd, c->out + c->outpos, c->outlen - c->outpos, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) {
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
                epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                return 0;
            }
            rconn_free(c);
            return -1;
        }
        c->outpos += (size_t)w;
    }
    c->outpos = c->outlen = 0;
    if (c->closing) {
        rconn_free(c);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

static void responder_loop(int lfd) {
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event evs[256];
    char reply[128];
    for (;;) {
        int n = epoll_wait(epfd, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            rconn_t *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    rconn_t *nc = calloc(1, sizeof(rconn_t));
                    nc->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &cev);
                    out_append(nc, "+OK ready\r\n", 11);
                    rconn_flush(nc);
                }
                continue;
            }
            if (evs[i].events & EPOLLOUT) {
                if (rconn_flush(c) < 0) continue;
            }
            if (!(evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            ssize_t r = recv(c->fd, c->in + c->inlen, sizeof c->in - (size_t)c->inlen, 0);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                rconn_free(c);
                continue;
            }
            c->inlen += (int)r;
            char *p = c->in, *end = c->in + c->inlen, *nl;
            while (!c->closing && (nl = memchr(p, '\n', (size_t)(end - p)))) {
                if (strncasecmp(p, "QUIT", 4) == 0) {
                    out_append(c, "+OK bye\r\n", 9);
                    c->closing = 1;
                } else if (strncasecmp(p, "RETR", 4) == 0) {
                    int m = snprintf(reply, sizeof reply, "+OK %zu octets\r\n", message_len - 3);
                    out_append(c, reply, (size_t)m);
                    out_append(c, message, message_len);
                } else if (strncasecmp(p, "STAT", 4) == 0) {
                    int m = snprintf(reply, sizeof reply, "+OK %ld %ld\r\n", messages,
                                     messages * (long)(message_len - 3));
                    out_append(c, reply, (size_t)m);
                } else {
                    out_append(c, "+OK\r\n", 5);
                }
                p = nl + 1;
            }
            c->inlen = (int)(end - p);
            memmove(c->in, p, (size_t)c->inlen);
            if (c->inlen == (int)sizeof c->in) c->inlen = 0; /* garbage: drop it */
            rconn_flush(c);
        }
    }
}

static int mode_responder(int argc, char **argv) {
    if (argc != 6) die("usage: responder PORT PROCS MESSAGES MSGSIZE");
    int port = atoi(argv[2]), procs = atoi(argv[3]);
    messages = atol(argv[4]);
    size_t size = (size_t)atol(argv[5]);
    raise_nofile();
    /* The message: 76-octet lines ("x" * 74 CRLF), then the terminating dot line. */
    message = malloc(size + 80);
    size_t k = 0;
    while (k + 76 <= size) {
        memset(message + k, 'x', 74);
        message[k + 74] = '\r';
        message[k + 75] = '\n';
        k += 76;
    }
    memcpy(message + k, ".\r\n", 3);
    message_len = k + 3;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0) die("bind: %s", strerror(errno));
    if (listen(lfd, 4096) < 0) die("listen: %s", strerror(errno));
    socklen_t alen = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &alen);
    printf("READY %d\n", ntohs(a.sin_port));
    fflush(stdout);
    pid_t parent = getpid();
    for (int p = 1; p < procs; p++) {
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != parent) _exit(0);
            responder_loop(lfd);
        }
    }
    responder_loop(lfd);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) die("usage: pop3load storm|idle|retr|session|uidl|sync|responder ...");
    const char *mode = argv[1];
    if (!strcmp(mode, "storm")) return mode_storm(argc, argv);
    if (!strcmp(mode, "idle")) return mode_idle(argc, argv);
    if (!strcmp(mode, "retr")) return mode_retr(argc, argv);
    if (!strcmp(mode, "session")) return mode_session(argc, argv);
    if (!strcmp(mode, "uidl")) return mode_uidl(argc, argv);
    if (!strcmp(mode, "sync")) return mode_sync(argc, argv);
    if (!strcmp(mode, "responder")) return mode_responder(argc, argv);
    die("unknown mode %s", mode);
    return 2;
}

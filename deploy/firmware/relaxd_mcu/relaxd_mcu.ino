// relaxd_mcu: reference firmware for the chair's light and vibration microcontroller.
//
// Speaks protocol mcu/1 (deploy/PROTOCOL.md) with the relaxd daemon over USB serial and drives
// an RGB LED strip (three MOSFETs) and the vibration motor driver with PWM.
//
// Safety, independent of the Raspberry Pi:
//   * every output is off at power-up and after a reset;
//   * dead-man timer: no valid line for deadman_ms (set by HELLO, default 1500 ms) turns every
//     output off and reports "0 DEADMAN"; only a new LIGHT/VIB command turns them on again;
//   * a hardware watchdog resets the board if this loop ever hangs;
//   * fit pull-down resistors on the MOSFET gates so a reset or unflashed board leaves them off.
//
// Boards: Raspberry Pi Pico with the arduino-pico core (any GPIO does PWM), or an Arduino
// Uno/Nano (use PWM pins 3, 5, 6, 9, 10, 11). Adjust the pin numbers below to the wiring.

#include <Arduino.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVR__)
#include <avr/wdt.h>
#endif

static const char MCU_PROTOCOL[] = "mcu/1";
static const char HOST_PROTOCOL[] = "relaxd/1";
static const char FIRMWARE_VERSION[] = "1.0.0";

static const uint8_t PIN_RED = 9;
static const uint8_t PIN_GREEN = 10;
static const uint8_t PIN_BLUE = 11;
static const uint8_t PIN_VIBRATION = 6;
static const uint32_t BAUD = 115200;
static const uint32_t PWM_HZ = 1000;  // RP2040 only; high enough not to band in the camera image

static const uint16_t DEADMAN_DEFAULT_MS = 1500;
static const uint16_t DEADMAN_MIN_MS = 100;
static const uint16_t DEADMAN_MAX_MS = 10000;
static const uint8_t MAX_LINE = 96;   // longer lines are discarded unanswered
static const uint8_t MAX_TOKENS = 6;  // seq, word and up to four arguments
static const long LEVEL_MAX = 1000;   // levels are permille of full duty

static char line[MAX_LINE + 1];
static uint8_t lineLength = 0;
static bool lineOverflow = false;
static uint32_t lastValidMs = 0;
static uint16_t deadmanMs = DEADMAN_DEFAULT_MS;
static bool deadmanArmed = false;  // armed by the first valid line, disarmed when it trips

// CRC-8/SMBUS: polynomial 0x07, initial value 0 (crc8("123456789") == 0xF4).
static uint8_t crc8(const char *data, size_t length) {
  uint8_t crc = 0;
  for (size_t i = 0; i < length; i++) {
    crc ^= (uint8_t)data[i];
    for (uint8_t bit = 0; bit < 8; bit++) {
      crc = (crc & 0x80) ? (uint8_t)((crc << 1) ^ 0x07) : (uint8_t)(crc << 1);
    }
  }
  return crc;
}

// Sends "<seq> <text> *<CRC8>\n".
static void sendLine(long seq, const char *text) {
  char body[MAX_LINE + 1];
  snprintf(body, sizeof body, "%ld %s", seq, text);
  char tail[6];
  snprintf(tail, sizeof tail, " *%02X", crc8(body, strlen(body)));
  Serial.print(body);
  Serial.print(tail);
  Serial.print('\n');
}

static void setLevel(uint8_t pin, long permille) {
#if defined(ARDUINO_ARCH_RP2040)
  analogWrite(pin, (int)permille);  // analogWriteRange(LEVEL_MAX) in setup()
#else
  analogWrite(pin, (int)((permille * 255 + LEVEL_MAX / 2) / LEVEL_MAX));
#endif
}

static void allOff() {
  setLevel(PIN_RED, 0);
  setLevel(PIN_GREEN, 0);
  setLevel(PIN_BLUE, 0);
  setLevel(PIN_VIBRATION, 0);
}

// Parses a decimal number in [low, high]; false if the text is anything else.
static bool parseNumber(const char *text, long low, long high, long *out) {
  if (text == NULL || *text == '\0' || strlen(text) > 6) return false;
  for (const char *c = text; *c; c++) {
    if (*c < '0' || *c > '9') return false;
  }
  long value = atol(text);
  if (value < low || value > high) return false;
  *out = value;
  return true;
}

// Checks that tokens[first..first+count) are levels 0..LEVEL_MAX; answers NAK if not.
static bool parseLevels(long seq, char **tokens, uint8_t tokenCount, uint8_t count, long *levels) {
  if (tokenCount != 2 + count) {
    sendLine(seq, "NAK SYNTAX");
    return false;
  }
  for (uint8_t i = 0; i < count; i++) {
    if (!parseNumber(tokens[2 + i], 0, LEVEL_MAX, &levels[i])) {
      sendLine(seq, "NAK RANGE");
      return false;
    }
  }
  return true;
}

static void handleHello(long seq, char **tokens, uint8_t tokenCount) {
  if (tokenCount < 3 || strcmp(tokens[2], HOST_PROTOCOL) != 0) {
    char text[32];
    snprintf(text, sizeof text, "NAK VERSION %s", MCU_PROTOCOL);
    sendLine(seq, text);
    return;
  }
  long ms;
  if (tokenCount >= 4) {
    if (!parseNumber(tokens[3], DEADMAN_MIN_MS, DEADMAN_MAX_MS, &ms)) {
      sendLine(seq, "NAK RANGE");
      return;
    }
    deadmanMs = (uint16_t)ms;
  }
  char text[40];
  snprintf(text, sizeof text, "ACK %s %s", MCU_PROTOCOL, FIRMWARE_VERSION);
  sendLine(seq, text);
}

static void handleLine(char *text) {
  // Split off " *HH" and check it before trusting anything else in the line.
  char *star = NULL;
  for (char *c = text; (c = strstr(c, " *")) != NULL; c++) star = c;
  long seq = atol(text);  // best guess, only to address a NAK CRC
  if (star == NULL || strlen(star) != 4 || !isxdigit((unsigned char)star[2]) || !isxdigit((unsigned char)star[3])) {
    sendLine(seq, "NAK CRC");
    return;
  }
  if (strtol(star + 2, NULL, 16) != crc8(text, (size_t)(star - text))) {
    sendLine(seq, "NAK CRC");
    return;
  }
  *star = '\0';

  char *tokens[MAX_TOKENS];
  uint8_t tokenCount = 0;
  for (char *token = strtok(text, " "); token != NULL && tokenCount < MAX_TOKENS; token = strtok(NULL, " ")) {
    tokens[tokenCount++] = token;
  }
  if (tokenCount < 2 || !parseNumber(tokens[0], 0, 65535, &seq)) {
    sendLine(0, "NAK SYNTAX");
    return;
  }
  lastValidMs = millis();  // a well-formed line with a good checksum: the host is alive
  deadmanArmed = true;

  const char *word = tokens[1];
  long levels[3];
  if (strcmp(word, "HELLO") == 0) {
    handleHello(seq, tokens, tokenCount);
  } else if (strcmp(word, "LIGHT") == 0) {
    if (!parseLevels(seq, tokens, tokenCount, 3, levels)) return;
    setLevel(PIN_RED, levels[0]);
    setLevel(PIN_GREEN, levels[1]);
    setLevel(PIN_BLUE, levels[2]);
    sendLine(seq, "ACK");
  } else if (strcmp(word, "VIB") == 0) {
    if (!parseLevels(seq, tokens, tokenCount, 1, levels)) return;
    setLevel(PIN_VIBRATION, levels[0]);
    sendLine(seq, "ACK");
  } else if (strcmp(word, "OFF") == 0) {
    allOff();
    sendLine(seq, "ACK");
  } else if (strcmp(word, "HB") == 0) {
    sendLine(seq, "ACK");
  } else {
    sendLine(seq, "NAK UNKNOWN");
  }
}

static void readSerial() {
  while (Serial.available() > 0) {
    char c = (char)Serial.read();
    if (c == '\n') {
      line[lineLength] = '\0';
      if (!lineOverflow && lineLength > 0) handleLine(line);
      lineLength = 0;
      lineOverflow = false;
    } else if (c == '\r') {
      continue;
    } else if (lineLength < MAX_LINE) {
      line[lineLength++] = c;
    } else {
      lineOverflow = true;  // garbage: drop until the next newline
    }
  }
}

static void checkDeadman() {
  if (deadmanArmed && (uint32_t)(millis() - lastValidMs) > deadmanMs) {
    allOff();
    deadmanArmed = false;
    sendLine(0, "DEADMAN");
  }
}

void setup() {
  pinMode(PIN_RED, OUTPUT);
  pinMode(PIN_GREEN, OUTPUT);
  pinMode(PIN_BLUE, OUTPUT);
  pinMode(PIN_VIBRATION, OUTPUT);
#if defined(ARDUINO_ARCH_RP2040)
  analogWriteFreq(PWM_HZ);
  analogWriteRange(LEVEL_MAX);
#endif
  allOff();
  Serial.begin(BAUD);
#if defined(__AVR__)
  wdt_enable(WDTO_500MS);
#elif defined(ARDUINO_ARCH_RP2040)
  rp2040.wdt_begin(500);
#endif
  char text[40];
  snprintf(text, sizeof text, "BOOT %s %s", MCU_PROTOCOL, FIRMWARE_VERSION);
  sendLine(0, text);
}

void loop() {
#if defined(__AVR__)
  wdt_reset();
#elif defined(ARDUINO_ARCH_RP2040)
  rp2040.wdt_reset();
#endif
  readSerial();
  checkDeadman();
}
